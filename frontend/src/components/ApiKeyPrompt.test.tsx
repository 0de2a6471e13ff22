// @vitest-environment jsdom
import { render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { App } from "../App";
import { cancelTask, fetchTasks, streamGeneration } from "../api/client";
import { getApiKey } from "../api/auth";

const KEY = "key-a-5f1e0c9d8b7a6f5e4d3c";
const CLUSTER = { model: "tiny", nodes: [] };

function authorization(init?: RequestInit): string | null {
  return new Headers(init?.headers).get("authorization");
}

/** An API that wants KEY: 401 in its own shape without it, else a small cluster, no tasks. */
function apiWantingKey() {
  const fetchMock = vi.fn(async (path: string, init?: RequestInit) => {
    if (authorization(init) !== `Bearer ${KEY}`) {
      const error = { error: { type: "unauthorized", message: "this API needs a key" } };
      return new Response(JSON.stringify(error), { status: 401, headers: { "www-authenticate": "Bearer" } });
    }
    if (path === "/api/cluster") return new Response(JSON.stringify(CLUSTER));
    if (path === "/api/tasks") return new Response(JSON.stringify({ tasks: [] }));
    if (path === "/api/models") return new Response(JSON.stringify({ models: [] }));
    if (path === "/api/nodes") return new Response(JSON.stringify({ nodes: [] }));
    if (path.startsWith("/api/tasks/")) return new Response(JSON.stringify({ request_id: "r", cancelled: true }));
    const done = { generated_text: "!", finish_reason: "length", usage: { prompt_tokens: 1, completion_tokens: 1 }, cached: false,
      timings: { total_ms: 1, tokenize_ms: 0, inference_ms: 1, partitions: [] }, request_id: "r", model: "tiny" };
    return new Response(`event: done\ndata: ${JSON.stringify(done)}\n\n`, { headers: { "content-type": "text/event-stream" } });
  });
  vi.stubGlobal("fetch", fetchMock);
  return fetchMock;
}

beforeEach(() => sessionStorage.clear());
afterEach(() => vi.unstubAllGlobals());

describe("API keys in the page", () => {
  it("asks for a key on 401, keeps it for the session, sends it on every call, and forgets it", async () => {
    const user = userEvent.setup();
    const fetchMock = apiWantingKey();
    render(<App />);

    // The API said 401: a labelled field asks for the key.
    const field = await screen.findByLabelText("API key");
    expect(screen.getByRole("dialog", { name: "This API needs a key" })).toContainElement(field);
    expect(field).toHaveAttribute("type", "password");
    await user.type(field, KEY);
    await user.click(screen.getByRole("button", { name: "Use key" }));

    // Kept for the session; the page polls at once with it and the prompt goes.
    expect(sessionStorage.getItem("splitgpt.apiKey")).toBe(KEY);
    await waitFor(() => expect(screen.getByText("API connected")).toBeInTheDocument());
    expect(screen.queryByRole("dialog")).toBeNull();
    const polled = fetchMock.mock.calls.filter(([path]) => path === "/api/cluster").map(([, init]) => authorization(init));
    expect(polled.at(-1)).toBe(`Bearer ${KEY}`);

    // Every other call carries it too: tasks, cancel, the stream.
    fetchMock.mockClear();
    await fetchTasks();
    await cancelTask("r");
    await streamGeneration({ text: "Hi", max_tokens: 1, temperature: 0, top_p: 1, top_k: 0, seed: null, stop: null }, { requestId: "r", onToken: () => {} });
    expect(fetchMock.mock.calls.map(([, init]) => authorization(init))).toEqual(Array(3).fill(`Bearer ${KEY}`));

    // Forget: gone from the session, and the next 401 asks again.
    await user.click(screen.getByRole("button", { name: "Forget API key" }));
    expect(getApiKey()).toBeNull();
    expect(await screen.findByRole("dialog", { name: "This API needs a key" })).toBeInTheDocument();
  });

  it("says when the key it sent was refused", async () => {
    sessionStorage.setItem("splitgpt.apiKey", "a-wrong-key");
    apiWantingKey();
    render(<App />);
    expect(await screen.findByRole("dialog", { name: "The API refused this key" })).toBeInTheDocument();
    expect(screen.getByText("API key needed")).toBeInTheDocument();
  });

  it("sends no authorization header while it has no key", async () => {
    const fetchMock = vi.fn(async () => new Response(JSON.stringify({ tasks: [] })));
    vi.stubGlobal("fetch", fetchMock);
    await fetchTasks();
    expect(authorization((fetchMock.mock.calls[0] as unknown as [string, RequestInit])[1])).toBeNull();
  });
});
