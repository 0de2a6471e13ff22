import type { ClusterNode } from "../api/types";
import { partitionColor } from "../cluster";
import { ms } from "../format";

/**
 * While the request streams: the replica it runs on in each partition (its
 * chain, from /api/tasks) and that replica's step latency now. The time each
 * partition spent on the request replaces this when the request is done.
 */
export function RunningChain({ chain }: { chain: ClusterNode[] }) {
  const max = Math.max(1, ...chain.map((n) => n.latency_ewma_ms ?? 0));
  return (
    <figure className="chart" aria-labelledby="running-chain-title">
      <figcaption id="running-chain-title">Running on (step latency now)</figcaption>
      <ul className="bars" data-testid="running-chain">
        {chain.map((node) => (
          <li key={node.id} className="bar-row">
            <span className="bar-label">part {node.partition}</span>
            <span className="bar-track" aria-hidden="true">
              <span
                className="bar-fill bar-live"
                style={{ width: `${((node.latency_ewma_ms ?? 0) / max) * 100}%`, background: partitionColor(node.partition) }}
              />
            </span>
            <span className="bar-value">
              {ms(node.latency_ewma_ms)}
              <span className="bar-nodes"> on {node.id}</span>
            </span>
          </li>
        ))}
      </ul>
    </figure>
  );
}
