// @vitest-environment jsdom
import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { App } from "./App";
import { RESPONSE, TWO_MODELS } from "./test/fixtures";

const json = (body: unknown, status = 200) => new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });

/** The gateway as the page sees it: two models, no task; GET /api/nodes answers `nodesStatus` (200 for an admin key, else 403). */
function gateway(nodesStatus: 200 | 403) {
  const fetchMock = vi.fn(async (path: string, init?: RequestInit) => {
    const method = init?.method ?? "GET";
    if (path === "/api/cluster") return json(TWO_MODELS);
    if (path === "/api/models") return json({ models: TWO_MODELS.models });
    if (path === "/api/tasks") return json({ tasks: [] });
    if (path === "/api/nodes")
      return nodesStatus === 200
        ? json({ nodes: TWO_MODELS.nodes })
        : json({ error: { type: "forbidden", message: "managing nodes and models needs an admin key (`admin:` in the keys file)" } }, 403);
    if (method === "POST" && path.endsWith("/cordon")) return json({ ...TWO_MODELS.nodes[3], cordoned: true, lifecycle: "cordoned" });
    if (path === "/api/model/stream") {
      const { model } = JSON.parse(init!.body as string);
      const done = { ...RESPONSE, model: model ?? "models/tiny-gpt2" };
      return new Response(`event: done\ndata: ${JSON.stringify(done)}\n\n`, { headers: { "content-type": "text/event-stream" } });
    }
    return json({ error: { type: "not_found", message: `no route ${method} ${path}` } }, 404);
  });
  vi.stubGlobal("fetch", fetchMock);
  const calls = (path: string, method = "GET") => fetchMock.mock.calls.filter(([p, i]) => p === path && (i?.method ?? "GET") === method);
  return { fetchMock, calls };
}

beforeEach(() => sessionStorage.clear());
afterEach(() => vi.unstubAllGlobals());

describe("the page with several models and node management", () => {
  it("hides cordon and drain from a key that GET /api/nodes refuses (403)", async () => {
    const api = gateway(403);
    render(<App />);
    await screen.findByTestId("replica-m1-part0-r0");
    await waitFor(() => expect(api.calls("/api/nodes")).toHaveLength(1));
    await within(screen.getByLabelText("Model")).findByRole("option", { name: "second (not ready)" });
    await new Promise((r) => setTimeout(r, 50)); // the refusal has come back (the fake answers at once)
    // Still no buttons, and no error shown for it.
    expect(screen.queryByLabelText(/^(Cordon|Uncordon|Drain) /)).toBeNull();
    expect(screen.queryByRole("alert")).toBeNull();
  });

  it("offers them when GET /api/nodes answers 200, and a Cordon click posts to that node and polls the cluster again", async () => {
    const user = userEvent.setup();
    const api = gateway(200);
    render(<App />);
    const cordon = await screen.findByLabelText("Cordon part0-r0");
    expect(screen.getByLabelText("Uncordon m1-part1-r0")).toBeInTheDocument();
    const polled = api.calls("/api/cluster").length;
    await user.click(cordon);
    expect(api.calls("/api/nodes/part0-r0/cordon", "POST")).toHaveLength(1);
    await waitFor(() => expect(api.calls("/api/cluster").length).toBeGreaterThan(polled));
  });

  it("sends the picked model with the prompt, none for the default, and says which model answered", async () => {
    const user = userEvent.setup();
    const api = gateway(403);
    render(<App />);
    const picker = screen.getByLabelText("Model");
    await within(picker).findByRole("option", { name: "second (not ready)" });
    expect(within(picker).getAllByRole("option").map((o) => o.textContent)).toEqual(["tiny-gpt2 (default)", "second (not ready)"]);

    await user.selectOptions(picker, "second");
    await user.click(screen.getByRole("button", { name: "Process Input" }));
    await waitFor(() => expect(screen.getByTestId("output-model")).toHaveTextContent("second"));
    await user.selectOptions(picker, "");
    await user.click(screen.getByRole("button", { name: "Process Input" }));
    await waitFor(() => expect(screen.getByTestId("output-model")).toHaveTextContent("tiny-gpt2"));

    const bodies = api.calls("/api/model/stream", "POST").map(([, init]) => JSON.parse(init!.body as string));
    expect(bodies[0].model).toBe("second");
    expect(bodies[1]).not.toHaveProperty("model");
  });
});
