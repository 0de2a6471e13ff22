// @vitest-environment jsdom
import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { CLUSTER, TWO_MODELS } from "../test/fixtures";
import { ClusterPanel } from "./ClusterPanel";
import { ApiError } from "../api/errors";

const live = (data = TWO_MODELS) => ({ data, error: null, updatedAt: Date.now() });

/** A fake API for the node routes: each call waits for `release()` when `hold`, then answers `answer(path)`. */
function nodeApi(answer: (path: string) => Response) {
  const calls: { path: string; method: string }[] = [];
  let release: () => void = () => {};
  let held = Promise.resolve();
  const fetchMock = vi.fn(async (path: string, init?: RequestInit) => {
    calls.push({ path, method: init?.method ?? "GET" });
    await held;
    return answer(path);
  });
  vi.stubGlobal("fetch", fetchMock);
  return {
    calls,
    hold() {
      held = new Promise((r) => (release = r));
    },
    release: () => release(),
  };
}

const json = (body: unknown, status = 200) => new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });

afterEach(() => vi.unstubAllGlobals());

const TASK = { request_id: "ui-mine", state: "decode", prompt_tokens: 5, generated_tokens: 7, max_tokens: 64, age_s: 0.4, chain: ["part0-r0", "part1-r1", "part2-r0"], replays: 0 };

describe("ClusterPanel", () => {
  it("draws the blocks bar, every partition, and every replica with its health", () => {
    render(<ClusterPanel cluster={{ data: CLUSTER, error: null, updatedAt: Date.now() }} tasks={[TASK]} ownRequestId="ui-mine" />);
    // 6 blocks, plus the embedding and the head at the two ends
    expect(document.querySelectorAll(".layer-cell")).toHaveLength(8);
    expect(screen.getByRole("img", { name: /partition 0: blocks 0 to 2; partition 1: blocks 3 to 4; partition 2: blocks 5 to 5/ })).toBeInTheDocument();
    expect(screen.getByTestId("cluster-summary")).toHaveTextContent("5/6 replicas up");
    for (const n of CLUSTER.nodes) {
      const card = screen.getByTestId(`replica-${n.id}`);
      expect(card).toHaveTextContent(n.address);
    }
    const dead = screen.getByTestId("replica-part1-r0");
    expect(dead).toHaveAttribute("data-health", "down");
    expect(dead).toHaveTextContent("down (unreachable)");
    expect(dead).toHaveTextContent("open (3 fail)");
    expect(screen.getByTestId("replica-part1-r1")).toHaveAttribute("data-health", "up");
    expect(within(screen.getByTestId("replica-part0-r0")).getByText("4.2 ms")).toBeInTheDocument();
    // What each replica holds: its weights and its process's resident memory; unknown while down.
    expect(screen.getByTestId("memory-part0-r0")).toHaveTextContent("weights 1.52 GB · RSS 2.18 GB");
    expect(screen.getByTestId("memory-part1-r0")).toHaveTextContent("weights – · RSS –");
  });

  it("marks the replicas the page's own request runs on", () => {
    render(<ClusterPanel cluster={{ data: CLUSTER, error: null, updatedAt: Date.now() }} tasks={[TASK]} ownRequestId="ui-mine" />);
    const own = [...document.querySelectorAll(".replica-own")].map((el) => el.getAttribute("data-testid"));
    expect(own).toEqual(["replica-part0-r0", "replica-part1-r1", "replica-part2-r0"]);
    expect(screen.getByTestId("replica-part1-r1")).toHaveTextContent("your request");
  });

  it("says the API is unreachable instead of going blank", () => {
    render(<ClusterPanel cluster={{ data: null, error: new ApiError(0, "unreachable", "x"), updatedAt: null }} tasks={[]} ownRequestId={null} />);
    expect(screen.getByRole("alert")).toHaveTextContent("The API is unreachable");
  });

  it("draws each model's chain apart: a group per model, the default first, its partitions in order", () => {
    render(<ClusterPanel cluster={live()} tasks={[]} ownRequestId={null} />);
    const groups = screen.getAllByRole("region").filter((el) => el.classList.contains("model-group"));
    expect(groups.map((g) => g.getAttribute("data-model"))).toEqual(["models/tiny-gpt2", "second"]);
    const [tiny, second] = groups;
    expect(within(tiny).getByRole("heading", { level: 3 })).toHaveTextContent("tiny-gpt2");
    expect(within(tiny).getByText("default")).toBeInTheDocument();
    expect(within(second).queryByText("default")).toBeNull();
    expect(within(second).getByText("not ready")).toBeInTheDocument();
    // Each model its own blocks bar and partitions, its replicas under them and nowhere else.
    expect(within(second).getByRole("img", { name: "partition 0: blocks 0 to 1; partition 1: blocks 2 to 3" })).toBeInTheDocument();
    expect(within(second).getAllByRole("heading", { level: 4 }).map((h) => h.textContent)).toEqual(["Partition 0 blocks 0–1", "Partition 1 blocks 2–3 + head"]);
    expect(within(second).getAllByRole("listitem").map((li) => li.getAttribute("data-testid"))).toEqual([
      "replica-m1-part0-r0",
      "replica-m1-part1-r0",
      "replica-m1-part1-r1",
    ]);
    expect(within(tiny).queryByTestId("replica-m1-part0-r0")).toBeNull();
    expect(within(tiny).getAllByRole("listitem")).toHaveLength(6);
    expect(screen.getByTestId("cluster-summary")).toHaveTextContent("8/9 replicas up");
  });

  it("shows each replica's lifecycle as a badge, its CPU, KV use and sequences", () => {
    render(<ClusterPanel cluster={live()} tasks={[]} ownRequestId={null} />);
    const lifecycles = ["m1-part0-r0", "m1-part1-r0", "m1-part1-r1", "part1-r0", "part0-r0"].map((id) => screen.getByTestId(`lifecycle-${id}`).textContent);
    expect(lifecycles).toEqual(["busy", "cordoned", "draining", "offline", "online"]);
    expect(screen.getByTestId("lifecycle-m1-part1-r0")).toHaveClass("lifecycle-cordoned");
    expect(screen.getByTestId("replica-m1-part1-r0")).toHaveAttribute("data-lifecycle", "cordoned");
    expect(screen.getByTestId("cpu-m1-part0-r0")).toHaveTextContent("98%");
    expect(screen.getByTestId("kv-m1-part0-r0")).toHaveTextContent("3.9k/4.1k");
    expect(screen.getByTestId("kv-m1-part0-r0")).toHaveClass("warn"); // 95% of its budget
    expect(screen.getByTestId("kv-m1-part0-r0").parentElement).toHaveAttribute("title", "KV cache: 3900 of 4096 positions (95%)");
    expect(screen.getByTestId("sequences-m1-part0-r0")).toHaveTextContent("7");
    expect(screen.getByTestId("kv-part0-r0")).toHaveTextContent("40/4.1k");
    // A dead replica: no CPU, no KV budget known.
    expect(screen.getByTestId("cpu-part1-r0")).toHaveTextContent("–");
    expect(screen.getByTestId("kv-part1-r0")).toHaveTextContent("–");
  });

  it("offers no cordon or drain unless the key is an admin's", () => {
    const { rerender } = render(<ClusterPanel cluster={live()} tasks={[]} ownRequestId={null} />);
    expect(screen.queryByRole("button", { name: /cordon|drain/i })).toBeNull();
    rerender(<ClusterPanel cluster={live()} tasks={[]} ownRequestId={null} admin />);
    const card = screen.getByTestId("replica-part0-r0");
    expect(within(card).getByRole("button", { name: "Cordon part0-r0" })).toBeEnabled();
    expect(within(card).getByRole("button", { name: "Drain part0-r0" })).toBeEnabled();
    // A cordoned replica offers Uncordon instead.
    expect(within(screen.getByTestId("replica-m1-part1-r0")).getByRole("button", { name: "Uncordon m1-part1-r0" })).toBeInTheDocument();
    expect(screen.getAllByRole("button", { name: /^Drain / })).toHaveLength(9);
  });

  it("cordons and uncordons through the API, its buttons waiting while the call runs", async () => {
    const user = userEvent.setup();
    const api = nodeApi((path) => json({ ...TWO_MODELS.nodes[0], id: path.split("/")[3] }));
    const onChanged = vi.fn();
    render(<ClusterPanel cluster={live()} tasks={[]} ownRequestId={null} admin onChanged={onChanged} />);
    api.hold();
    await user.click(screen.getByRole("button", { name: "Cordon part0-r0" }));
    expect(api.calls).toEqual([{ path: "/api/nodes/part0-r0/cordon", method: "POST" }]);
    const card = screen.getByTestId("replica-part0-r0");
    expect(within(card).getByRole("button", { name: "Cordon part0-r0" })).toBeDisabled();
    expect(within(card).getByRole("button", { name: "Cordon part0-r0" })).toHaveTextContent("Cordoning…");
    expect(within(card).getByRole("button", { name: "Drain part0-r0" })).toBeDisabled();
    expect(screen.getByRole("button", { name: "Cordon part0-r1" })).toBeEnabled(); // only that replica waits
    api.release();
    await waitFor(() => expect(within(card).getByRole("button", { name: "Cordon part0-r0" })).toBeEnabled());
    expect(onChanged).toHaveBeenCalledOnce(); // the cluster is polled again at once

    await user.click(screen.getByRole("button", { name: "Uncordon m1-part1-r0" }));
    expect(api.calls.at(-1)).toEqual({ path: "/api/nodes/m1-part1-r0/uncordon", method: "POST" });
  });

  it("drains only after a confirmation, then shows the drain report", async () => {
    const user = userEvent.setup();
    const report = { node_id: "part0-r1", moved: 3, moved_direct: 2, recomputed: 0, pause_ms: [2.5, 11.25, 4], max_pause_ms: 11.25, removed: true };
    const api = nodeApi(() => json(report));
    render(<ClusterPanel cluster={live()} tasks={[]} ownRequestId={null} admin />);
    await user.click(screen.getByRole("button", { name: "Drain part0-r1" }));
    const question = screen.getByRole("group", { name: "Confirm drain of part0-r1" });
    expect(question).toHaveTextContent("Drain part0-r1?");
    expect(within(question).getByRole("button", { name: "Cancel drain of part0-r1" })).toHaveFocus();
    expect(api.calls).toEqual([]); // nothing sent before the answer

    await user.click(within(question).getByRole("button", { name: "Cancel drain of part0-r1" }));
    expect(screen.queryByRole("group", { name: /Confirm drain/ })).toBeNull();
    expect(screen.getByRole("button", { name: "Drain part0-r1" })).toHaveFocus();
    expect(api.calls).toEqual([]);

    api.hold();
    await user.click(screen.getByRole("button", { name: "Drain part0-r1" }));
    await user.click(screen.getByRole("button", { name: "Yes, drain part0-r1" }));
    expect(api.calls).toEqual([{ path: "/api/nodes/part0-r1/drain", method: "POST" }]);
    expect(screen.getByRole("button", { name: "Drain part0-r1" })).toHaveTextContent("Draining…");
    expect(screen.getByRole("button", { name: "Drain part0-r1" })).toBeDisabled();
    api.release();
    const note = await screen.findByTestId("drain-report-part0-r1");
    expect(note).toHaveAttribute("role", "status");
    expect(note).toHaveTextContent("part0-r1 drained: 3 moved (K/V transferred, 2 node to node), 0 recomputed, longest pause 11.3 ms. It has left the cluster.");
    // In its partition's box, where the replica was.
    expect(note.closest(".partition")).toContainElement(screen.getByTestId("replica-part0-r0"));
    await user.click(screen.getByRole("button", { name: "Dismiss the drain report of part0-r1" }));
    expect(screen.queryByTestId("drain-report-part0-r1")).toBeNull();
  });

  it("says why a drain or a cordon was refused, in the API's own words", async () => {
    const user = userEvent.setup();
    nodeApi((path) =>
      path.endsWith("/drain")
        ? json({ error: { type: "conflict", message: "no other replica of partition 0 of model second can take its sequences" } }, 409)
        : json({ error: { type: "forbidden", message: "managing nodes and models needs an admin key" } }, 403),
    );
    render(<ClusterPanel cluster={live()} tasks={[]} ownRequestId={null} admin />);
    await user.click(screen.getByRole("button", { name: "Drain m1-part0-r0" }));
    await user.click(screen.getByRole("button", { name: "Yes, drain m1-part0-r0" }));
    const alert = await screen.findByRole("alert");
    expect(alert).toHaveTextContent("Drain m1-part0-r0: Not possible now");
    expect(alert).toHaveTextContent("no other replica of partition 0 of model second can take its sequences.");
    expect(screen.getByRole("button", { name: "Drain m1-part0-r0" })).toBeEnabled();

    await user.click(screen.getByRole("button", { name: "Cordon part2-r0" }));
    expect(await screen.findByText("Cordon part2-r0: This key may not do that")).toBeInTheDocument();
  });
});
