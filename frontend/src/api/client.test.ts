import { ApiError } from "./errors";
import { streamGeneration } from "./client";
import type { GenerationRequest } from "./types";

const REQUEST: GenerationRequest = { text: "Hi", max_tokens: 3, temperature: 0, top_p: 1, top_k: 0, seed: null, stop: null };

function sse(events: [string, unknown][]): string {
  return events.map(([name, data]) => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`).join("");
}

function mockFetch(response: Response | Error) {
  const fetchMock = vi.fn(async () => {
    if (response instanceof Error) throw response;
    return response;
  });
  vi.stubGlobal("fetch", fetchMock);
  return fetchMock;
}

const DONE = {
  generated_text: " there you",
  finish_reason: "length",
  usage: { prompt_tokens: 1, completion_tokens: 3 },
  cached: false,
  timings: { total_ms: 30, tokenize_ms: 1, inference_ms: 28, partitions: [{ partition: 0, node: "part0-r0", ms: 9 }] },
  request_id: "ui-1",
  model: "tiny",
};

afterEach(() => vi.unstubAllGlobals());

describe("streamGeneration", () => {
  it("feeds each token event to onToken, resolves with `done`, and sends the request id", async () => {
    const body = sse([
      ["token", { text: " there", token_id: 612, index: 0 }],
      ["token", { text: " you", token_id: 345, index: 1 }],
      ["done", DONE],
    ]);
    const fetchMock = mockFetch(new Response(body, { headers: { "content-type": "text/event-stream" } }));
    const tokens: string[] = [];
    const done = await streamGeneration(REQUEST, { requestId: "ui-1", onToken: (t) => tokens.push(t.text) });
    expect(tokens).toEqual([" there", " you"]);
    expect(done).toEqual(DONE);
    const [path, init] = fetchMock.mock.calls[0] as unknown as [string, RequestInit];
    expect(path).toBe("/api/model/stream");
    expect((init.headers as Record<string, string>)["x-request-id"]).toBe("ui-1");
    expect(JSON.parse(init.body as string)).toEqual(REQUEST);
  });

  it("rejects with the error event's words when the stream fails midway", async () => {
    const body = sse([
      ["token", { text: "a", token_id: 1, index: 0 }],
      ["error", { error: { type: "unavailable", message: "partition 1 has no usable replica" } }],
    ]);
    mockFetch(new Response(body));
    const error = await streamGeneration(REQUEST, { requestId: "r", onToken: () => {} }).catch((e) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect(error).toMatchObject({ status: 503, type: "unavailable", message: "partition 1 has no usable replica" });
  });

  it("rejects with the HTTP status and body of a refused request", async () => {
    const refusal = { error: { type: "validation_error", message: "temperature: Input should be greater than or equal to 0", param: "temperature" } };
    mockFetch(new Response(JSON.stringify(refusal), { status: 422, headers: { "content-type": "application/json" } }));
    const error = await streamGeneration(REQUEST, { requestId: "r", onToken: () => {} }).catch((e) => e);
    expect(error).toMatchObject({ status: 422, type: "validation_error", param: "temperature" });
  });

  it("says the API is unreachable when the connection fails", async () => {
    mockFetch(new TypeError("Failed to fetch"));
    const error = await streamGeneration(REQUEST, { requestId: "r", onToken: () => {} }).catch((e) => e);
    expect(error).toMatchObject({ status: 0, type: "unreachable" });
  });

  it("treats a stream that ends without `done` as an error, not a result", async () => {
    mockFetch(new Response(sse([["token", { text: "a", token_id: 1, index: 0 }]])));
    const error = await streamGeneration(REQUEST, { requestId: "r", onToken: () => {} }).catch((e) => e);
    expect(error).toMatchObject({ type: "stream_ended" });
  });
});
