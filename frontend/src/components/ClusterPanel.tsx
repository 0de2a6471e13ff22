import type { ClusterState, Task } from "../api/types";
import { buildClusterPicture, partitionColor, requestsByNode } from "../cluster";
import type { Polled } from "../hooks/usePolling";
import { ErrorBanner } from "./ErrorBanner";
import { LayerMap } from "./LayerMap";
import { ReplicaCard } from "./ReplicaCard";

interface Props {
  cluster: Polled<ClusterState>;
  tasks: Task[];
  ownRequestId: string | null;
}

/** The model cut across the nodes, live: which replica holds which blocks, and how each is doing. */
export function ClusterPanel({ cluster, tasks, ownRequestId }: Props) {
  const picture = cluster.data ? buildClusterPicture(cluster.data) : null;
  const routed = requestsByNode(tasks);
  const ownChain = new Set(tasks.find((t) => t.request_id === ownRequestId)?.chain ?? []);
  return (
    <section className="panel cluster" aria-labelledby="cluster-title">
      <div className="panel-head">
        <h2 id="cluster-title">Cluster</h2>
        {picture && (
          <span className={`badge ${picture.upNodes === picture.totalNodes ? "badge-ok" : "badge-warn"}`} data-testid="cluster-summary">
            {picture.upNodes}/{picture.totalNodes} replicas up
          </span>
        )}
        <span className="muted small live" aria-hidden="true">
          {cluster.updatedAt ? `live · ${new Date(cluster.updatedAt).toLocaleTimeString()}` : "connecting…"}
        </span>
      </div>
      {cluster.error != null && <ErrorBanner error={cluster.error} />}
      {picture && (
        <>
          <LayerMap picture={picture} />
          <div className="partitions">
            {picture.partitions.map((p) => (
              <div key={p.partition} className="partition" style={{ borderTopColor: partitionColor(p.partition) }}>
                <h3>
                  Partition {p.partition}
                  <span className="muted">
                    {" "}
                    {blockRange(p.layers)}
                    {p.holdsHead ? " + head" : ""}
                  </span>
                </h3>
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
                    />
                  ))}
                </ul>
              </div>
            ))}
          </div>
        </>
      )}
    </section>
  );
}

function blockRange(layers: [number, number] | null): string {
  if (!layers) return "blocks ?";
  return layers[1] - layers[0] === 1 ? `block ${layers[0]}` : `blocks ${layers[0]}–${layers[1] - 1}`;
}
