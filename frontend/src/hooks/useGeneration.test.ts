// @vitest-environment jsdom
import { act, renderHook, waitFor } from "@testing-library/react";
import { RESPONSE } from "../test/fixtures";
import { DEFAULT_SETTINGS, toRequestBody } from "../settings";
import { useGeneration } from "./useGeneration";

const BODY = toRequestBody("Hi", DEFAULT_SETTINGS);
const encoder = new TextEncoder();

/** A fake API: the stream sends one token and stays open; DELETE /api/tasks/{id} answers `deleteStatus`
 *  and, when it cancels, ends the stream the way the API does, with `done` and finish "cancelled". */
function fakeApi(deleteStatus: number) {
  let stream: ReadableStreamDefaultController<Uint8Array> | null = null;
  const calls: { url: string; method: string; requestId?: string }[] = [];
  const fetchMock = vi.fn(async (url: string, init: RequestInit) => {
    calls.push({ url, method: init.method ?? "GET", requestId: (init.headers as Record<string, string> | undefined)?.["x-request-id"] });
    if (url === "/api/model/stream") {
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          stream = controller;
          controller.enqueue(encoder.encode('event: token\ndata: {"text": " there", "token_id": 1, "index": 0}\n\n'));
          init.signal?.addEventListener("abort", () => controller.error(new DOMException("aborted", "AbortError")));
        },
      });
      return new Response(body, { headers: { "content-type": "text/event-stream" } });
    }
    if (deleteStatus === 200) {
      const done = { ...RESPONSE, generated_text: " there", finish_reason: "cancelled" };
      stream?.enqueue(encoder.encode(`event: done\ndata: ${JSON.stringify(done)}\n\n`));
      stream?.close();
      return new Response(JSON.stringify({ cancelled: true }));
    }
    return new Response(JSON.stringify({ error: { type: "not_found", message: "no running request has this id" } }), { status: deleteStatus });
  });
  vi.stubGlobal("fetch", fetchMock);
  return calls;
}

afterEach(() => vi.unstubAllGlobals());

describe("useGeneration", () => {
  it("streams tokens in; Stop cancels the task on the cluster by its request id and keeps its metrics", async () => {
    const calls = fakeApi(200);
    const { result } = renderHook(() => useGeneration());
    act(() => void result.current.start(BODY));
    await waitFor(() => expect(result.current.state.text).toBe(" there"));
    expect(result.current.state.phase).toBe("running");
    const requestId = calls[0].requestId!;
    expect(requestId).toMatch(/^ui-/);

    await act(() => result.current.stop());
    expect(calls[1]).toMatchObject({ url: `/api/tasks/${requestId}`, method: "DELETE" });
    await waitFor(() => expect(result.current.state.phase).toBe("done"));
    expect(result.current.state.response?.finish_reason).toBe("cancelled");
    expect(result.current.state.stopping).toBe(false);
  });

  it("drops the connection at once when the cluster no longer knows the request", async () => {
    fakeApi(404);
    const { result } = renderHook(() => useGeneration());
    act(() => void result.current.start(BODY));
    await waitFor(() => expect(result.current.state.text).toBe(" there"));
    await act(() => result.current.stop());
    await waitFor(() => expect(result.current.state.phase).toBe("done"));
    expect(result.current.state.response).toBeNull(); // ended by the page, not by the API
    expect(result.current.state.error).toBeNull(); // a stop is not an error
    expect(result.current.state.text).toBe(" there"); // what came stays
  });
});
