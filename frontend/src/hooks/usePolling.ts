import { useEffect, useRef, useState } from "react";

export interface Polled<T> {
  data: T | null;
  error: unknown;
  updatedAt: number | null;
}

/**
 * Calls `load` now and every `intervalMs` after the previous call settles (so a
 * slow API never gets a pile of overlapping requests). Keeps the last good data
 * when a call fails, and reports the failure next to it. A new `refreshKey`
 * polls at once (say, when a request ends, so its row goes without waiting).
 */
export function usePolling<T>(load: (signal: AbortSignal) => Promise<T>, intervalMs: number, refreshKey?: unknown): Polled<T> {
  const [state, setState] = useState<Polled<T>>({ data: null, error: null, updatedAt: null });
  const loadRef = useRef(load);
  loadRef.current = load;

  useEffect(() => {
    const controller = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const tick = async () => {
      try {
        const data = await loadRef.current(controller.signal);
        if (!controller.signal.aborted) setState({ data, error: null, updatedAt: Date.now() });
      } catch (error) {
        if (!controller.signal.aborted) setState((s) => ({ ...s, error }));
      }
      if (!controller.signal.aborted) timer = setTimeout(tick, intervalMs);
    };
    void tick();
    return () => {
      controller.abort();
      clearTimeout(timer);
    };
  }, [intervalMs, refreshKey]);

  return state;
}
