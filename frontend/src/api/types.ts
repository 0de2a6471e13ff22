// The API's contract (services/splitgpt/api/schemas.py and app.py), as the page uses it.

export interface GenerationRequest {
  text: string;
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
}

export interface ClusterState {
  model: string;
  nodes: ClusterNode[];
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
}
