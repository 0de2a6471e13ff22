import { useId, useState } from "react";
import { cordonNode, drainNode, uncordonNode } from "../api/client";
import type { ClusterNode, ClusterState, DrainReport, Task } from "../api/types";
import { buildClusterPicture, groupByModel, partitionColor, requestsByNode, type ChainView, type ModelGroup, type PartitionView } from "../cluster";
import { ms, modelLabel } from "../format";
import type { Polled } from "../hooks/usePolling";
import { ErrorBanner } from "./ErrorBanner";
import { LayerMap } from "./LayerMap";
import { ReplicaCard, type NodeAction } from "./ReplicaCard";

interface Props {
  cluster: Polled<ClusterState>;
  tasks: Task[];
  ownRequestId: string | null;
  admin?: boolean; // GET /api/nodes answered 200: offer cordon and drain
  onChanged?: () => void; // a node was changed: poll the cluster now
}

/** What came of an admin's call, shown in the partition of the replica it was for (a drained one is gone). */
type Outcome = { nodeId: string; model: string; partition: number } & (
  | { kind: "drained"; report: DrainReport }
  | { kind: "failed"; action: NodeAction; error: unknown }
);

const ACTION_WORD: Record<NodeAction, string> = { cordon: "Cordon", uncordon: "Uncordon", drain: "Drain" };

/** The models cut across the nodes, live: per model, which replica holds which blocks, and how each is doing. */
export function ClusterPanel({ cluster, tasks, ownRequestId, admin = false, onChanged }: Props) {
  const [pending, setPending] = useState<Record<string, NodeAction>>({});
  const [outcomes, setOutcomes] = useState<Outcome[]>([]);
  const picture = cluster.data ? buildClusterPicture(cluster.data) : null;
  const groups = cluster.data ? groupByModel(cluster.data) : [];
  const routed = requestsByNode(tasks);
  const ownChain = new Set(tasks.find((t) => t.request_id === ownRequestId)?.chain ?? []);
  const modelOf = (node: ClusterNode) => node.model || groups[0]?.name || "";

  const act = async (node: ClusterNode, action: NodeAction) => {
    const where = { nodeId: node.id, model: modelOf(node), partition: node.partition };
    setPending((p) => ({ ...p, [node.id]: action }));
    setOutcomes((list) => list.filter((o) => o.nodeId !== node.id));
    try {
      if (action === "drain") {
        const report = await drainNode(node.id);
        setOutcomes((list) => [...list, { ...where, kind: "drained", report }]);
      } else {
        await (action === "cordon" ? cordonNode : uncordonNode)(node.id);
      }
    } catch (error) {
      setOutcomes((list) => [...list, { ...where, kind: "failed", action, error }]);
    } finally {
      setPending(({ [node.id]: _, ...rest }) => rest);
      onChanged?.();
    }
  };
  const dismiss = (outcome: Outcome) => setOutcomes((list) => list.filter((o) => o !== outcome));
  // An outcome whose partition is no longer drawn shows at the top instead.
  const drawn = (o: Outcome) =>
    groups.some((g) => g.name === o.model && g.chains.some((c) => c.partitions.some((p) => p.partition === o.partition)));

  const shared = { routed, ownChain, admin, pending, act, outcomes, dismiss };
  return (
    <section className="panel cluster" aria-labelledby="cluster-title">
      <div className="panel-head">
        <h2 id="cluster-title">Cluster</h2>
        {picture && (
          <span className={`badge ${picture.upNodes === picture.totalNodes ? "badge-ok" : "badge-warn"}`} data-testid="cluster-summary">
            {picture.upNodes}/{picture.totalNodes} replicas up
          </span>
        )}
        {groups.length > 1 && <span className="badge">{groups.length} models</span>}
        <span className="muted small live" aria-hidden="true">
          {cluster.updatedAt ? `live · ${new Date(cluster.updatedAt).toLocaleTimeString()}` : "connecting…"}
        </span>
      </div>
      {cluster.error != null && <ErrorBanner error={cluster.error} />}
      {outcomes.filter((o) => !drawn(o)).map((o) => (
        <OutcomeNote key={`${o.nodeId}-${o.kind}`} outcome={o} onDismiss={() => dismiss(o)} />
      ))}
      {groups.map((group, index) => (
        <ModelSection key={group.name || index} group={group} index={index} {...shared} />
      ))}
    </section>
  );
}

interface Shared {
  routed: Map<string, string[]>;
  ownChain: Set<string>;
  admin: boolean;
  pending: Record<string, NodeAction>;
  act: (node: ClusterNode, action: NodeAction) => void;
  outcomes: Outcome[];
  dismiss: (outcome: Outcome) => void;
}

/** One model: its name, whether it is the default and ready, then its chain (or chains, during a rollout). */
function ModelSection({ group, index, ...shared }: { group: ModelGroup; index: number } & Shared) {
  const headingId = useId();
  const ready = group.info ? group.info.ready : group.upNodes > 0;
  return (
    <section className="model-group" aria-labelledby={headingId} data-testid={`model-group-${index}`} data-model={group.name}>
      <div className="model-head">
        <h3 id={headingId} title={group.name}>
          {modelLabel(group.name) || "model"}
        </h3>
        {group.isDefault && <span className="badge">default</span>}
        <span className={`badge ${ready ? "badge-ok" : "badge-warn"}`} data-testid={`model-ready-${index}`}>
          {ready ? "ready" : "not ready"}
        </span>
        <span className="muted small model-count">
          {group.upNodes}/{group.totalNodes} up
        </span>
      </div>
      {group.totalNodes === 0 && <p className="muted small">No node serves this model now.</p>}
      {group.chains.map((chain) =>
        chain.totalNodes === 0 ? null : (
          <div key={chain.splitGeneration} className="chain-view">
            {group.chains.length > 1 && (
              <p className="chain-label small">
                split {chain.splitGeneration}: {chain.current ? "new requests go here" : "retiring, its running requests finish"}
              </p>
            )}
            <LayerMap picture={chain} />
            <div className="partitions">
              {chain.partitions.map((p) => (
                <PartitionBox key={p.partition} group={group} chain={chain} p={p} {...shared} />
              ))}
            </div>
          </div>
        ),
      )}
    </section>
  );
}

function PartitionBox({ group, chain, p, routed, ownChain, admin, pending, act, outcomes, dismiss }: { group: ModelGroup; chain: ChainView; p: PartitionView } & Shared) {
  const here = chain.current ? outcomes.filter((o) => o.model === group.name && o.partition === p.partition) : [];
  return (
    <div className="partition" style={{ borderTopColor: partitionColor(p.partition) }}>
      <h4>
        Partition {p.partition}
        <span className="muted">
          {" "}
          {blockRange(p.layers)}
          {p.holdsHead ? " + head" : ""}
        </span>
      </h4>
      <p className={`partition-health ${p.upReplicas === 0 ? "warn" : p.upReplicas < p.replicas.length ? "degraded" : "muted"}`}>
        {p.upReplicas}/{p.replicas.length} up{p.upReplicas === 0 ? ": requests wait, then 503" : ""}
      </p>
      <ul className="replicas">
        {p.replicas.map((node) => (
          <ReplicaCard
            key={node.id}
            node={node}
            requestCount={routed.get(node.id)?.length ?? 0}
            servesOwnRequest={ownChain.has(node.id)}
            admin={admin ? { pending: pending[node.id] ?? null, onAction: act } : undefined}
          />
        ))}
      </ul>
      {here.map((o) => (
        <OutcomeNote key={`${o.nodeId}-${o.kind}`} outcome={o} onDismiss={() => dismiss(o)} />
      ))}
    </div>
  );
}

function OutcomeNote({ outcome, onDismiss }: { outcome: Outcome; onDismiss: () => void }) {
  if (outcome.kind === "failed") {
    return <ErrorBanner error={outcome.error} context={`${ACTION_WORD[outcome.action]} ${outcome.nodeId}`} onDismiss={onDismiss} />;
  }
  const { report } = outcome;
  return (
    <div className={`notice${report.removed ? "" : " notice-warn"}`} role="status" data-testid={`drain-report-${report.node_id}`}>
      <p>
        <strong>{report.node_id} drained:</strong> {report.moved} moved (K/V transferred, {report.moved_direct} node to node), {report.recomputed} recomputed, longest pause{" "}
        {ms(report.max_pause_ms)}.{" "}
        {report.removed ? "It has left the cluster." : "The timeout passed with requests still on it: it stays cordoned."}
      </p>
      <button type="button" className="ghost" onClick={onDismiss} aria-label={`Dismiss the drain report of ${report.node_id}`}>
        ×
      </button>
    </div>
  );
}

function blockRange(layers: [number, number] | null): string {
  if (!layers) return "blocks ?";
  return layers[1] - layers[0] === 1 ? `block ${layers[0]}` : `blocks ${layers[0]}–${layers[1] - 1}`;
}
