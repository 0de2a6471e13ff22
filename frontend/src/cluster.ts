// The cluster response turned into the picture the page draws: the model's
// blocks from 0 to n_layer, each partition's range, and its replicas' health.

import type { ClusterNode, ClusterState, Task } from "./api/types";

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

export function buildClusterPicture(state: ClusterState): ClusterPicture {
  const byPartition = new Map<number, ClusterNode[]>();
  for (const node of state.nodes) {
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
    model: state.model,
    nLayer: ends.length ? Math.max(...ends) : null,
    partitions,
    upNodes: state.nodes.filter((n) => nodeHealth(n) === "up").length,
    totalNodes: state.nodes.length,
  };
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
