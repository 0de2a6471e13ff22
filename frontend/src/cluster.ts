// The cluster response turned into the picture the page draws: per model, its
// blocks from 0 to n_layer, each partition's range, and its replicas' health.

import type { ClusterNode, ClusterState, Lifecycle, ModelInfo, Task } from "./api/types";

export type Health = "up" | "down" | "starting";

export interface PartitionView {
  partition: number;
  layers: [number, number] | null; // null while no replica of it has reported its range
  replicas: ClusterNode[];
  holdsHead: boolean; // the last partition also embeds (tied wte) and samples
  upReplicas: number;
}

export interface ClusterPicture {
  model: string;
  nLayer: number | null;
  partitions: PartitionView[];
  upNodes: number;
  totalNodes: number;
}

/** A replica is up when its last probe said SERVING and its circuit is closed. */
export function nodeHealth(node: ClusterNode): Health {
  if (node.status === "SERVING" && node.circuit !== "open") return "up";
  // NOT_SERVING: loading its weights or draining; UNKNOWN: not probed yet.
  if ((node.status === "NOT_SERVING" || node.status === "UNKNOWN") && node.circuit !== "open") return "starting";
  return "down";
}

export function healthLabel(node: ClusterNode): string {
  if (node.circuit === "open") return node.status === "SERVING" ? "circuit open" : `down (${node.status.toLowerCase()})`;
  switch (node.status) {
    case "SERVING":
      return "serving";
    case "NOT_SERVING":
      return "not serving";
    case "UNREACHABLE":
      return "unreachable";
    case "UNKNOWN":
      return "probing";
    default:
      return node.status.toLowerCase().replace(/_/g, " ");
  }
}

/** The whole cluster as one picture: its counts are every model's replicas together. */
export function buildClusterPicture(state: ClusterState): ClusterPicture {
  return pictureOf(state.model, state.nodes);
}

function pictureOf(model: string, nodes: ClusterNode[], nLayerHint: number | null = null): ClusterPicture {
  const byPartition = new Map<number, ClusterNode[]>();
  for (const node of nodes) {
    const list = byPartition.get(node.partition) ?? [];
    list.push(node);
    byPartition.set(node.partition, list);
  }
  const numbers = [...byPartition.keys()].sort((a, b) => a - b);
  const last = numbers.length ? numbers[numbers.length - 1] : -1;
  const partitions = numbers.map((partition): PartitionView => {
    const replicas = byPartition.get(partition)!.slice().sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }));
    const layers = replicas.find((r) => r.layers)?.layers ?? null;
    return {
      partition,
      layers,
      replicas,
      holdsHead: partition === last,
      upReplicas: replicas.filter((r) => nodeHealth(r) === "up").length,
    };
  });
  const ends = partitions.flatMap((p) => (p.layers ? [p.layers[1]] : []));
  return {
    model,
    nLayer: ends.length ? Math.max(...ends) : nLayerHint,
    partitions,
    upNodes: nodes.filter((n) => nodeHealth(n) === "up").length,
    totalNodes: nodes.length,
  };
}

/** One split of a model: its chain of partitions. A rollout serves a new split beside the old one for a while. */
export interface ChainView extends ClusterPicture {
  splitGeneration: number;
  current: boolean; // the split new requests go to
}

export interface ModelGroup {
  name: string; // what requests call it; "" from a gateway older than several models
  info: ModelInfo | null; // null: its nodes name a model the gateway's list does not have
  isDefault: boolean;
  chains: ChainView[]; // the current split first
  upNodes: number;
  totalNodes: number;
}

/**
 * The nodes by the model they serve, the models in the API's order (the default first),
 * each model's nodes by split (the current one first), then by partition. A node that
 * names no model (an older gateway) belongs to the default.
 */
export function groupByModel(state: ClusterState): ModelGroup[] {
  const models = state.models ?? [];
  const defaultName = models[0]?.name ?? "";
  const byModel = new Map<string, ClusterNode[]>(models.map((m) => [m.name, []]));
  for (const node of state.nodes) {
    const name = node.model || defaultName;
    byModel.set(name, [...(byModel.get(name) ?? []), node]);
  }
  const listed = new Set(models.map((m) => m.name));
  const names = [...models.map((m) => m.name), ...[...byModel.keys()].filter((n) => !listed.has(n)).sort()];
  return names.map((name): ModelGroup => {
    const info = models.find((m) => m.name === name) ?? null;
    const nodes = byModel.get(name) ?? [];
    const checkpoint = info?.model_id || (name === defaultName ? state.model : name);
    const current = info?.split_generation ?? Math.max(0, ...nodes.map((n) => n.split_generation ?? 0));
    const generations = [...new Set([current, ...nodes.map((n) => n.split_generation ?? 0)])].sort((a, b) =>
      a === current ? -1 : b === current ? 1 : b - a,
    );
    const chains = generations
      .map((generation): ChainView => {
        const mine = nodes.filter((n) => (n.split_generation ?? 0) === generation);
        const hint = generation === current && info?.n_layer ? info.n_layer : null;
        return { ...pictureOf(checkpoint, mine, hint), splitGeneration: generation, current: generation === current };
      })
      .filter((chain) => chain.current || chain.totalNodes > 0);
    return {
      name,
      info,
      isDefault: name === defaultName,
      chains,
      upNodes: nodes.filter((n) => nodeHealth(n) === "up").length,
      totalNodes: nodes.length,
    };
  });
}

/** online | busy | offline | error | cordoned | draining: the coordinator's word, or the page's guess from an older gateway. */
export function nodeLifecycle(node: ClusterNode): Lifecycle {
  if (node.lifecycle) return node.lifecycle;
  if (node.status === "MISCONFIGURED" || (node.status === "SERVING" && node.circuit === "open")) return "error";
  if (node.status !== "SERVING") return "offline";
  if (node.draining) return "draining";
  if (node.cordoned) return "cordoned";
  return "online";
}

/** Replica id -> the running requests routed through it. */
export function requestsByNode(tasks: Task[]): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const task of tasks) {
    for (const node of task.chain) {
      map.set(node, [...(map.get(node) ?? []), task.request_id]);
    }
  }
  return map;
}

const PALETTE = ["#38bdf8", "#a78bfa", "#34d399", "#fbbf24", "#f472b6", "#fb923c", "#22d3ee", "#a3e635"];

export function partitionColor(partition: number): string {
  return PALETTE[partition % PALETTE.length];
}
