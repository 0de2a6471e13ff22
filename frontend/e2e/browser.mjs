// End to end, in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; never a downloaded browser), against a running stack:
//
//   UI_URL=http://127.0.0.1:5173 EXPECTED_TEXT='...' node e2e/browser.mjs
//
// The prompt is typed and sent with "Process Input"; the streamed text must
// equal EXPECTED_TEXT (the API's greedy text for PROMPT, which the caller gets
// uncached); the metrics and every node must show. With E2E_FAILOVER=1 the
// script asks its caller, on stdout/stdin, to kill -9 a replica ("E2E KILL
// <id>", answered with one line "ok"); the page must mark it down, then up
// once `splitgpt up` has started it again. Then a long generation
// is stopped with Stop, and must end on the cluster too. The model picker must
// list the API's models; with SECOND_MODEL the prompt goes to that model and must
// stream EXPECTED_SECOND_TEXT, on that model's own chain. With CORDON_NODE a
// Cordon click must turn that replica's badge to cordoned, and Uncordon back.
// Screenshots go to SCREENSHOT_DIR at desktop (1280x900) and phone (390x844) widths.

import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const UI_URL = required("UI_URL");
const PROMPT = process.env.PROMPT ?? "The meaning of life is";
const EXPECTED_TEXT = process.env.EXPECTED_TEXT;
const SHOTS = process.env.SCREENSHOT_DIR ?? "run/ui-screenshots";
const FAILOVER = process.env.E2E_FAILOVER === "1";
const KILL_NODE = process.env.KILL_NODE ?? "part1-r0";
const LONG_MAX_TOKENS = process.env.LONG_MAX_TOKENS ?? "900";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SECOND_MODEL = process.env.SECOND_MODEL;
const EXPECTED_SECOND_TEXT = process.env.EXPECTED_SECOND_TEXT;
const CORDON_NODE = process.env.CORDON_NODE;

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const started = Date.now();
function step(message) {
  console.log(`[e2e ${((Date.now() - started) / 1000).toFixed(1)}s] ${message}`);
}

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

// The caller's answers to "E2E KILL", one line each.
const answers = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function askCaller(request) {
  console.log(`E2E ${request}`);
  const { value, done } = await answers.next();
  check(!done && value.trim() === "ok", `the caller answered ${JSON.stringify(value)} to ${request}`);
}

async function apiJson(page, path, init) {
  // Through the UI's own origin: the same proxy the page uses.
  return page.evaluate(
    async ([p, i]) => {
      const r = await fetch(p, i);
      return { status: r.status, body: await r.json() };
    },
    [path, init],
  );
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  step(`screenshot ${name}.png`);
}

async function replicaHealth(page, id) {
  return page.getByTestId(`replica-${id}`).getAttribute("data-health");
}

async function waitHealth(page, id, health, timeoutMs) {
  await page.waitForFunction(
    ([i, h]) => document.querySelector(`[data-testid="replica-${i}"]`)?.getAttribute("data-health") === h,
    [id, health],
    { timeout: timeoutMs, polling: 100 },
  );
}

async function waitLifecycle(page, id, lifecycles, timeoutMs) {
  await page.waitForFunction(
    ([i, l]) => l.includes(document.querySelector(`[data-testid="replica-${i}"]`)?.getAttribute("data-lifecycle")),
    [id, lifecycles],
    { timeout: timeoutMs, polling: 100 },
  );
}

async function waitFinished(page) {
  await page.waitForFunction(() => /streaming|finished/.test(document.querySelector('[data-testid="generation-status"]')?.textContent ?? ""), null, {
    timeout: 10000,
  });
  await page.waitForFunction(() => document.querySelector('[data-testid="generation-status"]')?.textContent?.startsWith("finished"), null, {
    timeout: 60000,
  });
}

async function run(page) {
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  // Chromium logs every non-2xx response as a console error; the 422 below is on purpose.
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && consoleErrors.push(m.text()));

  await page.setViewportSize({ width: 1280, height: 900 });
  await page.goto(UI_URL);
  step("page open");

  // The cluster: every node, all up.
  const first = await apiJson(page, "/api/cluster");
  check(first.status === 200, `/api/cluster answered ${first.status}`);
  const count = first.body.nodes.length;
  await page.waitForFunction((n) => document.querySelector('[data-testid="cluster-summary"]')?.textContent === `${n}/${n} replicas up`, count, {
    timeout: 15000,
  });
  // Every replica up, so each has said which blocks it holds.
  const nodes = (await apiJson(page, "/api/cluster")).body.nodes;
  check(nodes.every((n) => n.layers), `every node reports its blocks: ${JSON.stringify(nodes)}`);
  for (const node of nodes) {
    const card = page.getByTestId(`replica-${node.id}`);
    check((await card.count()) === 1, `replica ${node.id} is drawn`);
    check((await card.textContent()).includes(node.address), `replica ${node.id} shows its address`);
    check((await replicaHealth(page, node.id)) === "up", `${node.id} is up`);
    // What it holds, in human units: "weights 400 kB · RSS 400 MB".
    const memory = await page.getByTestId(`memory-${node.id}`).textContent();
    check(/^weights [\d.]+ [kMGT]?B · RSS [\d.]+ [kMGT]?B$/.test(memory), `${node.id} shows its memory: ${memory}`);
  }
  // Each model's chain drawn apart, in the API's order (the default first): its own block bar, its own replicas.
  const models = (await apiJson(page, "/api/models")).body.models;
  const groups = await page.locator(".model-group").evaluateAll((els) => els.map((el) => el.getAttribute("data-model")));
  check(JSON.stringify(groups) === JSON.stringify(models.map((m) => m.name)), `one group per model, in order: ${groups}`);
  for (const model of models) {
    const group = page.locator(".model-group").nth(groups.indexOf(model.name));
    const cells = await group.locator(".layer-cell").count();
    check(cells === model.n_layer + 2, `${model.name}: the block bar has ${model.n_layer} blocks + emb + head (${cells})`);
    const drawn = (await group.locator(".replica").evaluateAll((els) => els.map((el) => el.dataset.testid))).sort();
    const served = nodes.filter((n) => n.model === model.name).map((n) => `replica-${n.id}`).sort();
    check(JSON.stringify(drawn) === JSON.stringify(served), `${model.name}'s group holds its own replicas: ${drawn}`);
    const badges = await group.locator(".lifecycle").allTextContents();
    check(badges.every((b) => b === "online"), `${model.name}'s replicas are online: ${badges}`);
  }
  // The model picker: the same models, the default first, marked, and sent without a name.
  const options = await page.locator("select#model option").evaluateAll((els) => els.map((o) => [o.value, o.textContent]));
  check(options.length === models.length, `the picker lists every model: ${JSON.stringify(options)}`);
  check(options[0][0] === "" && options[0][1].endsWith("(default)"), `the default first, marked: ${JSON.stringify(options[0])}`);
  for (const [i, model] of models.entries()) {
    if (i > 0) check(options[i][0] === model.name, `option ${i} is ${model.name}: ${JSON.stringify(options[i])}`);
    check(options[i][1].includes("not ready") === !model.ready, `${model.name}'s readiness shown: ${options[i][1]}`);
  }
  step(`cluster: ${nodes.length} replicas of ${models.length} models drawn; picker lists ${options.map((o) => o[1]).join(", ")}`);

  // The API docs link works through the page's own origin.
  check((await page.getByRole("link", { name: "API docs" }).getAttribute("href")) === "/docs", "the API docs link");
  const docs = await page.evaluate(async () => {
    const r = await fetch("/docs");
    return { status: r.status, text: await r.text() };
  });
  check(docs.status === 200 && /swagger/i.test(docs.text), `/docs answers through the proxy (${docs.status})`);

  // The settings' defaults are the API's own (its OpenAPI schema says them).
  const openapi = await apiJson(page, "/openapi.json");
  const schema = openapi.body.components.schemas.ProcessRequest.properties;
  const fields = { maxTokens: "max_tokens", temperature: "temperature", topP: "top_p", topK: "top_k" };
  for (const [input, field] of Object.entries(fields)) {
    const shown = await page.locator(`input[name="${input}"]`).inputValue();
    check(Number(shown) === schema[field].default, `${field}: the page shows ${shown}, the API's default is ${schema[field].default}`);
  }
  check((await page.locator('input[name="seed"]').inputValue()) === "" && (schema.seed.default ?? null) === null, "seed: none by default");
  check((await page.locator('input[name="ignoreEos"]').isChecked()) === schema.ignore_eos.default, "ignore_eos: the API's default");
  if (schema.cache) check((await page.locator('input[name="useCache"]').isChecked()) === schema.cache.default, "cache: the API's default");

  // A field the API refuses: its 422, said plainly.
  await page.locator('input[name="temperature"]').fill("-1");
  await page.getByRole("button", { name: "Process Input" }).click();
  const alert = page.locator(".playground").getByRole("alert");
  await alert.waitFor({ timeout: 10000 });
  check((await alert.textContent()).includes("Invalid setting: temperature"), `the 422 is named: ${await alert.textContent()}`);
  await page.getByRole("button", { name: "Reset to API defaults" }).click();
  step("422 shown in the page");

  // Type, Process Input, watch it stream.
  const prompt = page.getByLabel("Prompt", { exact: true });
  await prompt.fill(PROMPT);
  await page.getByRole("button", { name: "Process Input" }).click();
  const status = page.getByTestId("generation-status");
  await waitFinished(page);
  const text = await page.getByTestId("generated-text").textContent();
  step(`streamed ${JSON.stringify(text.slice(0, 60))}… (${await status.textContent()})`);
  if (EXPECTED_TEXT !== undefined) check(text === EXPECTED_TEXT, `the streamed text ${JSON.stringify(text)} equals the API's ${JSON.stringify(EXPECTED_TEXT)}`);
  check(!(await page.locator(".badge-cached").count()), "a fresh generation is not marked cached");

  // The metrics: every tile has a value, and each partition has its time and node.
  const tiles = await page.getByTestId("metrics").locator(".tile").allTextContents();
  for (const label of ["Total", "Tokenize", "Inference", "TTFT", "Tokens/s", "Prompt tokens", "Completion tokens", "Finish"]) {
    const tile = tiles.find((t) => t.startsWith(label));
    check(tile && !tile.endsWith("–"), `the ${label} tile has a value (${tile})`);
  }
  const partitionRows = await page.getByTestId("partition-times").locator("li").allTextContents();
  const defaultNodes = nodes.filter((n) => n.model === models[0].name); // the prompt goes to the default model
  const partitions = [...new Set(defaultNodes.map((n) => n.partition))];
  check(partitionRows.length === partitions.length, `one timing row per partition: ${partitionRows}`);
  for (const p of partitions) {
    const row = partitionRows.find((r) => r.startsWith(`part ${p}`));
    check(row && defaultNodes.some((n) => n.partition === p && row.includes(` ${n.id}`)), `partition ${p}'s row names its node: ${row}`);
  }
  await shot(page, "desktop-streamed");

  if (FAILOVER) {
    await askCaller(`KILL ${KILL_NODE}`);
    const killedAt = Date.now();
    await waitHealth(page, KILL_NODE, "down", 15000);
    step(`${KILL_NODE} marked down ${((Date.now() - killedAt) / 1000).toFixed(1)}s after kill -9`);
    // A dead process's memory is unknown, not its last figures (the next probe drops them).
    await page.waitForFunction(
      (id) => document.querySelector(`[data-testid="memory-${id}"]`)?.textContent === "weights – · RSS –",
      KILL_NODE,
      { timeout: 5000, polling: 100 },
    );
    await shot(page, "desktop-node-down");
    // `splitgpt up` starts a dead node again; the coordinator's probes take it back.
    await waitHealth(page, KILL_NODE, "up", 60000);
    step(`${KILL_NODE} back up ${((Date.now() - killedAt) / 1000).toFixed(1)}s after kill -9`);
  }

  // The same again comes from the cache, and says so.
  await page.getByRole("button", { name: "Process Input" }).click();
  await page.locator(".badge-cached").waitFor({ timeout: 15000 });
  check((await page.getByTestId("generated-text").textContent()) === text, "the cached text is the same text");
  step("repeat served from the cache, badge shown");


  // A long generation, stopped with Stop: it must end on the cluster too.
  await page.locator('input[name="maxTokens"]').fill(LONG_MAX_TOKENS);
  await page.getByLabel("Ignore end-of-text").check();
  await prompt.fill("Once upon a time, in a cluster far away,");
  await prompt.press("Control+Enter"); // the keyboard path
  await page.waitForFunction(() => {
    const m = /streaming · (\d+) tokens/.exec(document.querySelector('[data-testid="generation-status"]')?.textContent ?? "");
    return m && Number(m[1]) >= 20;
  }, null, { timeout: 30000, polling: 50 });
  // The page's own request: its row in the running requests, its chain highlighted.
  await page.locator("tr.own").waitFor({ timeout: 5000 });
  await page.locator(".replica-own").first().waitFor({ timeout: 5000 });
  const ownChain = await page.locator("tr.own td.chain").textContent();
  check(ownChain.split(" → ").length === partitions.length, `the chain names one replica per partition: ${ownChain}`);
  // ... and the metrics say, live, which replica each partition runs it on.
  await page.getByTestId("running-chain").waitFor({ timeout: 5000 });
  const live = await page.getByTestId("running-chain").locator("li").allTextContents();
  for (const id of ownChain.split(" → ")) check(live.some((row) => row.includes(`on ${id}`)), `the live chain names ${id}: ${live}`);
  await shot(page, "desktop-streaming");
  await page.getByRole("button", { name: "Stop" }).click();
  await page.waitForFunction(() => /finished|stopped/.test(document.querySelector('[data-testid="generation-status"]')?.textContent ?? ""), null, {
    timeout: 10000,
  });
  const stoppedStatus = await status.textContent();
  check(stoppedStatus === "finished: cancelled", `Stop ends the request as cancelled: ${stoppedStatus}`);
  const completion = await page.getByTestId("metrics").locator(".tile", { hasText: "Completion tokens" }).locator("dd").textContent();
  check(Number(completion) < Number(LONG_MAX_TOKENS), `stopped early: ${completion} of ${LONG_MAX_TOKENS} tokens`);
  const tasks = await apiJson(page, "/api/tasks");
  check(tasks.body.tasks.length === 0, `nothing runs on the cluster after Stop: ${JSON.stringify(tasks.body.tasks)}`);
  step(`stopped after ${completion} tokens; /api/tasks is empty`);
  await page.getByText("None right now", { exact: false }).waitFor({ timeout: 5000 });
  await page.getByRole("button", { name: "Reset to API defaults" }).click();

  if (SECOND_MODEL) {
    // The prompt to another model: its greedy text, from its own chain of replicas.
    await prompt.fill(PROMPT);
    await page.getByLabel("Model", { exact: true }).selectOption(SECOND_MODEL);
    await page.getByRole("button", { name: "Process Input" }).click();
    await waitFinished(page);
    const second = await page.getByTestId("generated-text").textContent();
    if (EXPECTED_SECOND_TEXT !== undefined)
      check(second === EXPECTED_SECOND_TEXT, `${SECOND_MODEL}'s streamed text ${JSON.stringify(second)} equals the API's ${JSON.stringify(EXPECTED_SECOND_TEXT)}`);
    check(second !== text, `${SECOND_MODEL} answers otherwise than the default model`);
    const answered = await page.getByTestId("output-model").textContent();
    check(answered === SECOND_MODEL, `the output says ${SECOND_MODEL} answered: ${answered}`);
    const ownNodes = nodes.filter((n) => n.model === SECOND_MODEL).map((n) => n.id);
    const rows = await page.getByTestId("partition-times").locator("li").allTextContents();
    const ran = rows.map((r) => r.split(" on ").pop().split(" + "));
    check(rows.length === new Set(nodes.filter((n) => n.model === SECOND_MODEL).map((n) => n.partition)).size, `one row per partition of ${SECOND_MODEL}: ${rows}`);
    check(ran.every((ids) => ids.every((id) => ownNodes.includes(id))), `it ran on ${SECOND_MODEL}'s replicas only: ${rows}`);
    step(`${SECOND_MODEL} streamed ${JSON.stringify(second.slice(0, 40))}…`);
  }

  if (CORDON_NODE) {
    // An admin (no keys: everyone on this host) cordons a replica, and uncordons it.
    const cordon = page.getByRole("button", { name: `Cordon ${CORDON_NODE}`, exact: true });
    await cordon.waitFor({ timeout: 10000 });
    await cordon.click();
    await waitLifecycle(page, CORDON_NODE, ["cordoned"], 5000);
    check((await page.getByTestId(`lifecycle-${CORDON_NODE}`).textContent()) === "cordoned", `${CORDON_NODE}'s badge says cordoned`);
    const listed = (await apiJson(page, "/api/nodes")).body.nodes.find((n) => n.id === CORDON_NODE);
    check(listed?.cordoned === true, `GET /api/nodes says ${CORDON_NODE} is cordoned: ${JSON.stringify(listed)}`);
    // Drain asks first; Cancel leaves the replica be.
    await page.getByRole("button", { name: `Drain ${CORDON_NODE}`, exact: true }).click();
    const question = page.getByRole("group", { name: `Confirm drain of ${CORDON_NODE}` });
    await question.waitFor({ timeout: 2000 });
    await shot(page, "desktop-models-admin");
    await question.getByRole("button", { name: `Cancel drain of ${CORDON_NODE}` }).click();
    await page.getByRole("button", { name: `Uncordon ${CORDON_NODE}`, exact: true }).click();
    await waitLifecycle(page, CORDON_NODE, ["online", "busy"], 5000);
    step(`${CORDON_NODE} cordoned, then uncordoned, from the page`);
  }
  if (SECOND_MODEL) await page.getByLabel("Model", { exact: true }).selectOption("");

  // Phone width: the same page, one column.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole("button", { name: "Process Input" }).scrollIntoViewIfNeeded();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(overflow <= 0, `no sideways scrolling at 390 px (overflow ${overflow}px)`);
  await shot(page, "phone");

  check(consoleErrors.length === 0, `no errors in the console: ${consoleErrors.join(" | ")}`);
}

mkdirSync(SHOTS, { recursive: true });
rmSync(join(SHOTS, "failure.png"), { force: true }); // only this run's failure, if any
const profile = mkdtempSync(join(tmpdir(), "splitgpt-e2e-chromium-"));
let context;
let code = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
    viewport: { width: 1280, height: 900 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  try {
    await run(page);
    step("all checks passed");
  } catch (error) {
    await page.screenshot({ path: join(SHOTS, "failure.png"), fullPage: true }).catch(() => {});
    throw error;
  }
} catch (error) {
  console.error(error instanceof Error ? error.stack : error);
  code = 1;
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
