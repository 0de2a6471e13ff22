import type { ClusterNode, ClusterState, ModelInfo, ProcessResponse } from "../api/types";

export function node(id: string, partition: number, layers: [number, number] | null, extra: Partial<ClusterNode> = {}): ClusterNode {
  return {
    id,
    address: `127.0.0.1:${50100 + Number(id.slice(-1)) + partition * 2}`,
    partition,
    layers,
    status: "SERVING",
    circuit: "closed",
    consecutive_failures: 0,
    in_flight: 0,
    latency_ewma_ms: 4.2,
    weight_bytes: 1_520_000_000,
    resident_bytes: 2_180_000_000,
    model: "models/tiny-gpt2",
    num_partitions: 3,
    split_generation: 0,
    lifecycle: "online",
    cordoned: false,
    draining: false,
    cpu_percent: 12.4,
    kv_tokens: 40,
    kv_max_tokens: 4096,
    sequences: 1,
    ...extra,
  };
}

export function modelInfo(name: string, extra: Partial<ModelInfo> = {}): ModelInfo {
  return { name, model_id: name, n_ctx: 1024, vocab_size: 50257, eos_token_id: 50256, n_layer: 6, num_partitions: 3, ready: true, split_generation: 0, ...extra };
}

/** 6 blocks in 3 partitions x 2 replicas, one replica of partition 1 killed. */
export const CLUSTER: ClusterState = {
  model: "models/tiny-gpt2",
  models: [modelInfo("models/tiny-gpt2")],
  nodes: [
    node("part2-r1", 2, [5, 6]),
    node("part0-r0", 0, [0, 3], { in_flight: 1 }),
    node("part0-r1", 0, [0, 3]),
    node("part1-r0", 1, [3, 5], {
      status: "UNREACHABLE",
      circuit: "open",
      consecutive_failures: 3,
      latency_ewma_ms: null,
      weight_bytes: 0,
      resident_bytes: 0,
      lifecycle: "offline",
      cpu_percent: 0,
      kv_tokens: 0,
      kv_max_tokens: 0,
      sequences: 0,
    }),
    node("part1-r1", 1, [3, 5], { in_flight: 1 }),
    node("part2-r0", 2, [5, 6], { in_flight: 1 }),
  ],
};

/** Two models: the default (tiny, as CLUSTER) and "second", 4 blocks in 2 partitions of one replica each, not ready
 *  (its partition 1 is cordoned, then draining: a replica of it is busy). Listed in the API's order, the default first. */
export const TWO_MODELS: ClusterState = {
  model: "models/tiny-gpt2",
  models: [modelInfo("models/tiny-gpt2"), modelInfo("second", { model_id: "/ckpt/second-gpt2", n_layer: 4, num_partitions: 2, ready: false })],
  nodes: [
    node("m1-part1-r0", 1, [2, 4], { model: "second", num_partitions: 2, lifecycle: "cordoned", cordoned: true }),
    node("m1-part0-r0", 0, [0, 2], { model: "second", num_partitions: 2, lifecycle: "busy", kv_tokens: 3900, kv_max_tokens: 4096, sequences: 7, cpu_percent: 97.6 }),
    node("m1-part1-r1", 1, [2, 4], { model: "second", num_partitions: 2, lifecycle: "draining", cordoned: true, draining: true }),
    ...CLUSTER.nodes,
  ],
};

export const RESPONSE: ProcessResponse = {
  generated_text: " to be found",
  finish_reason: "length",
  usage: { prompt_tokens: 5, completion_tokens: 3 },
  cached: false,
  timings: {
    total_ms: 120.5,
    tokenize_ms: 1.25,
    inference_ms: 100,
    partitions: [
      { partition: 0, node: "part0-r0", ms: 40 },
      { partition: 1, node: "part1-r0", ms: 10 },
      { partition: 1, node: "part1-r1", ms: 20 },
      { partition: 2, node: "part2-r0", ms: 35 },
    ],
  },
  request_id: "ui-1",
  model: "models/tiny-gpt2",
};
