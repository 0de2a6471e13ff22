// The API's contract (services/splitgpt/api/schemas.py and app.py), as the page uses it.

export interface GenerationRequest {
  text: string;
  model?: string; // absent: the default model
  max_tokens: number;
  temperature: number;
  top_p: number;
  top_k: number;
  seed: number | null;
  stop: string[] | null;
}

export interface PartitionTiming {
  partition: number;
  node: string;
  ms: number;
}

export interface ProcessResponse {
  generated_text: string;
  finish_reason: string;
  usage: { prompt_tokens: number; completion_tokens: number };
  cached: boolean;
  timings: {
    total_ms: number;
    tokenize_ms: number;
    inference_ms: number;
    partitions: PartitionTiming[];
  };
  request_id: string;
  model: string;
}

export interface TokenEvent {
  text: string;
  token_id: number;
  index: number;
}

export interface ErrorBody {
  error: { type: string; message: string; param?: string | null };
}

export interface ClusterNode {
  id: string;
  address: string;
  partition: number;
  layers: [number, number] | null;
  status: string; // grpc.health.v1 status, UNREACHABLE, UNKNOWN, MISCONFIGURED
  circuit: string; // "open" | "closed"
  consecutive_failures: number;
  in_flight: number;
  latency_ewma_ms: number | null;
  weight_bytes: number; // the weights it holds; 0 while not SERVING
  resident_bytes: number; // its process's resident memory as last read; 0 while not SERVING
  // Since several models (issue 19); an older gateway leaves them out.
  model?: string; // the name of the model it serves
  num_partitions?: number; // partitions of the split it belongs to
  split_generation?: number; // which split of its model (a rollout adds one)
  lifecycle?: Lifecycle | null;
  cordoned?: boolean;
  draining?: boolean;
  cpu_percent?: number; // of one core, over the last few seconds
  kv_tokens?: number; // positions its KV cache holds
  kv_max_tokens?: number; // its KV budget in positions
  sequences?: number; // running sequences whose chain goes through it
}

/** What an operator sees of a node (the coordinator's cluster_view.lifecycle). */
export type Lifecycle = "online" | "busy" | "offline" | "error" | "cordoned" | "draining";

/** A served model (GET /api/models, and `models` of /api/cluster), the default first. */
export interface ModelInfo {
  name: string; // what requests call it (`model`)
  model_id: string; // the checkpoint its nodes load
  n_ctx: number;
  vocab_size: number;
  eos_token_id: number;
  n_layer: number;
  num_partitions: number;
  ready: boolean; // every partition of its current split has a SERVING node
  split_generation: number;
}

export interface ClusterState {
  model: string; // the default model's checkpoint
  models?: ModelInfo[]; // every model served, the default first
  nodes: ClusterNode[];
}

/** POST /api/nodes/{id}/drain */
export interface DrainReport {
  node_id: string;
  moved: number; // sequences whose K/V went to another replica
  moved_direct: number; // of those, read by the other replica from the node itself (not through the coordinator)
  recomputed: number; // sequences rebuilt elsewhere
  pause_ms: number[];
  max_pause_ms: number;
  removed: boolean; // false: the timeout passed with sequences left; the node stays cordoned
}

export interface Task {
  request_id: string;
  state: string;
  prompt_tokens: number;
  generated_tokens: number;
  max_tokens: number;
  age_s: number;
  chain: string[];
  replays: number;
  model?: string;
  migrations?: number; // times its K/V moved to another replica (a drain)
}
