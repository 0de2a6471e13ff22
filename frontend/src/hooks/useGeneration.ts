import { useCallback, useRef, useState } from "react";
import { cancelTask, newRequestId, streamGeneration } from "../api/client";
import type { ProcessResponse } from "../api/types";
import type { RequestBody } from "../settings";

export type Phase = "idle" | "running" | "done" | "error";

export interface StreamedToken {
  text: string;
  atMs: number; // since the request was sent, measured in the browser
}

export interface Generation {
  phase: Phase;
  requestId: string | null;
  prompt: string;
  tokens: StreamedToken[];
  text: string;
  response: ProcessResponse | null;
  error: unknown;
  stopping: boolean;
  elapsedMs: number | null; // browser-side, send to `done`
}

const IDLE: Generation = {
  phase: "idle",
  requestId: null,
  prompt: "",
  tokens: [],
  text: "",
  response: null,
  error: null,
  stopping: false,
  elapsedMs: null,
};

// After Stop, the request is cancelled on the cluster (DELETE /api/tasks/{id}),
// and its stream then ends with finish_reason "cancelled" and its metrics. If
// that does not come in this long, the page drops the connection itself,
// which also makes the API cancel the generation.
const ABORT_AFTER_STOP_MS = 2000;

export function useGeneration() {
  const [state, setState] = useState<Generation>(IDLE);
  const controllerRef = useRef<AbortController | null>(null);

  const start = useCallback(async (body: RequestBody) => {
    controllerRef.current?.abort();
    const controller = new AbortController();
    controllerRef.current = controller;
    const requestId = newRequestId();
    const sentAt = performance.now();
    setState({ ...IDLE, phase: "running", requestId, prompt: body.text });
    // Tokens arrive faster than React should re-render; batch them per frame.
    let pending: StreamedToken[] = [];
    let frame = 0;
    const flush = () => {
      frame = 0;
      const batch = pending;
      pending = [];
      if (batch.length === 0) return;
      setState((s) =>
        s.requestId !== requestId
          ? s
          : { ...s, tokens: s.tokens.concat(batch), text: s.text + batch.map((t) => t.text).join("") },
      );
    };
    try {
      const response = await streamGeneration(body, {
        requestId,
        signal: controller.signal,
        onToken: (token) => {
          pending.push({ text: token.text, atMs: performance.now() - sentAt });
          if (!frame) frame = requestAnimationFrame(flush);
        },
      });
      if (frame) cancelAnimationFrame(frame);
      flush();
      setState((s) =>
        s.requestId !== requestId
          ? s
          : { ...s, phase: "done", response, text: response.generated_text, stopping: false, elapsedMs: performance.now() - sentAt },
      );
    } catch (error) {
      if (frame) cancelAnimationFrame(frame);
      flush();
      const aborted = controller.signal.aborted;
      setState((s) =>
        s.requestId !== requestId
          ? s
          : { ...s, phase: aborted ? "done" : "error", error: aborted ? null : error, stopping: false, elapsedMs: performance.now() - sentAt },
      );
    } finally {
      if (controllerRef.current === controller) controllerRef.current = null;
    }
  }, []);

  const stop = useCallback(async () => {
    const controller = controllerRef.current;
    const requestId = state.requestId;
    if (!controller || !requestId) return;
    setState((s) => ({ ...s, stopping: true }));
    const timer = setTimeout(() => controller.abort(), ABORT_AFTER_STOP_MS);
    try {
      // false: not running on the cluster (yet, or any more): end the stream here.
      if (!(await cancelTask(requestId))) controller.abort();
    } catch {
      controller.abort();
    }
    if (controller.signal.aborted) clearTimeout(timer);
  }, [state.requestId]);

  return { state, start, stop };
}
