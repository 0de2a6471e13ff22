import type { ClusterNode } from "../api/types";
import { healthLabel, nodeHealth } from "../cluster";
import { bytes, ms } from "../format";

interface Props {
  node: ClusterNode;
  requestCount: number; // running requests routed through this replica
  servesOwnRequest: boolean; // the page's own request goes through it
}

export function ReplicaCard({ node, requestCount, servesOwnRequest }: Props) {
  const health = nodeHealth(node);
  return (
    <li
      className={`replica replica-${health}${servesOwnRequest ? " replica-own" : ""}`}
      data-testid={`replica-${node.id}`}
      data-health={health}
      aria-label={`replica ${node.id}: ${healthLabel(node)}`}
    >
      <div className="replica-head">
        <span className={`dot dot-${health}`} aria-hidden="true" />
        <strong className="replica-id">{node.id}</strong>
        <span className={`pill pill-${health}`}>{healthLabel(node)}</span>
      </div>
      <div className="replica-address">{node.address}</div>
      <dl className="replica-stats">
        <div>
          <dt>circuit</dt>
          <dd className={node.circuit === "open" ? "warn" : undefined}>
            {node.circuit}
            {node.consecutive_failures > 0 ? ` (${node.consecutive_failures} fail)` : ""}
          </dd>
        </div>
        <div>
          <dt>in flight</dt>
          <dd>{node.in_flight}</dd>
        </div>
        <div>
          <dt>step</dt>
          <dd>{ms(node.latency_ewma_ms)}</dd>
        </div>
      </dl>
      <div className="replica-memory" data-testid={`memory-${node.id}`} title="weights it holds · its process's resident memory">
        weights {bytes(node.weight_bytes)} · RSS {bytes(node.resident_bytes)}
      </div>
      {(requestCount > 0 || servesOwnRequest) && (
        <div className="replica-requests">
          {servesOwnRequest ? "▶ your request" : ""}
          {servesOwnRequest && requestCount > 1 ? " + " : ""}
          {requestCount - (servesOwnRequest ? 1 : 0) > 0 ? `${requestCount - (servesOwnRequest ? 1 : 0)} other` : ""}
        </div>
      )}
    </li>
  );
}
