// The page's calls to the splitgpt API. Paths are same-origin: `splitgpt ui`
// (or nginx in a container, or Vite in development) proxies them to the API.

import { keyAccepted, keyRefused, withApiKey } from "./auth";
import { ApiError, errorFromResponse, unreachable } from "./errors";
import { readSse } from "./sse";
import type { ClusterNode, ClusterState, DrainReport, ErrorBody, GenerationRequest, ModelInfo, ProcessResponse, Task, TokenEvent } from "./types";

async function send(path: string, init?: RequestInit): Promise<Response> {
  let response: Response;
  try {
    // Every call carries the session's API key, when the page has one.
    response = await fetch(path, withApiKey(init));
  } catch (cause) {
    if (init?.signal?.aborted) throw cause; // the page cancelled it: not an error to show
    throw unreachable(cause);
  }
  if (response.status === 401) keyRefused(); // the page asks for a key
  else keyAccepted();
  if (!response.ok) throw await errorFromResponse(response);
  return response;
}

async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  const response = await send(path, { signal, headers: { accept: "application/json" } });
  return (await response.json()) as T;
}

export const fetchCluster = (signal?: AbortSignal) => getJson<ClusterState>("/api/cluster", signal);

export const fetchTasks = async (signal?: AbortSignal) => (await getJson<{ tasks: Task[] }>("/api/tasks", signal)).tasks;

/** Every served model, the default first. */
export const fetchModels = async (signal?: AbortSignal) => (await getJson<{ models: ModelInfo[] }>("/api/models", signal)).models;

/** Every node, for an admin key (or with no keys configured); anyone else gets a 403. */
export const fetchNodes = async (signal?: AbortSignal) => (await getJson<{ nodes: ClusterNode[] }>("/api/nodes", signal)).nodes;

async function postJson<T>(path: string): Promise<T> {
  const response = await send(path, { method: "POST", headers: { accept: "application/json" } });
  return (await response.json()) as T;
}

const nodePath = (id: string) => `/api/nodes/${encodeURIComponent(id)}`;

/** No new requests go to the node; those running on it stay. */
export const cordonNode = (id: string) => postJson<ClusterNode>(`${nodePath(id)}/cordon`);

/** The node takes new requests again. */
export const uncordonNode = (id: string) => postJson<ClusterNode>(`${nodePath(id)}/uncordon`);

/** Cordon the node, move its running requests' K/V to other replicas, then remove it (the API's default timeout). */
export const drainNode = (id: string) => postJson<DrainReport>(`${nodePath(id)}/drain`);

/** Cancel a running request; false when it had already finished. */
export async function cancelTask(requestId: string): Promise<boolean> {
  try {
    await send(`/api/tasks/${encodeURIComponent(requestId)}`, { method: "DELETE" });
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return false;
    throw error;
  }
}

export function newRequestId(): string {
  return `ui-${crypto.randomUUID()}`;
}

export interface StreamOptions {
  requestId: string;
  signal?: AbortSignal;
  onToken: (token: TokenEvent) => void;
}

/**
 * POST /api/model/stream and feed every `token` event to onToken; resolves with
 * the `done` event's whole response. A refused request (4xx/5xx before the
 * stream starts) and an `error` event mid-stream both reject with an ApiError.
 */
export async function streamGeneration(request: GenerationRequest, options: StreamOptions): Promise<ProcessResponse> {
  const response = await send("/api/model/stream", {
    method: "POST",
    headers: { "content-type": "application/json", accept: "text/event-stream", "x-request-id": options.requestId },
    body: JSON.stringify(request),
    signal: options.signal,
  });
  if (!response.body) throw new ApiError(502, "no_body", "the stream answered without a body");
  for await (const event of readSse(response.body, options.signal)) {
    if (event.event === "token") {
      options.onToken(JSON.parse(event.data) as TokenEvent);
    } else if (event.event === "done") {
      return JSON.parse(event.data) as ProcessResponse;
    } else if (event.event === "error") {
      const { error } = JSON.parse(event.data) as ErrorBody;
      throw new ApiError(streamErrorStatus(error.type), error.type, error.message, error.param);
    }
  }
  if (options.signal?.aborted) throw new DOMException("cancelled", "AbortError");
  throw new ApiError(502, "stream_ended", "the stream ended before its `done` event (the API or the proxy went away)");
}

// An error event has no status line; map its type to the status the same
// error gets when it happens before the stream starts, so it reads the same.
function streamErrorStatus(type: string): number {
  if (type.includes("overload") || type.includes("queue")) return 429;
  if (type.includes("unavailable") || type === "shutting_down") return 503;
  if (type.includes("timeout") || type.includes("deadline")) return 504;
  return 500;
}
