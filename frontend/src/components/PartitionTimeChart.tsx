import type { PartitionTiming } from "../api/types";
import { partitionColor } from "../cluster";
import { ms } from "../format";

interface Props {
  partitions: PartitionTiming[];
  cached: boolean;
  pending: boolean;
}

/**
 * Time each partition spent on this request, one row per partition, split by
 * the replica (node) that did the work: after a failover a partition's time
 * is shared by two nodes, and the row shows both.
 */
export function PartitionTimeChart({ partitions, cached, pending }: Props) {
  const rows = new Map<number, PartitionTiming[]>();
  for (const t of partitions) rows.set(t.partition, [...(rows.get(t.partition) ?? []), t]);
  const sorted = [...rows.entries()].sort((a, b) => a[0] - b[0]);
  const totals = sorted.map(([, list]) => list.reduce((sum, t) => sum + t.ms, 0));
  const max = Math.max(1, ...totals);
  return (
    <figure className="chart" aria-labelledby="partition-chart-title">
      <figcaption id="partition-chart-title">Time per partition and node</figcaption>
      {sorted.length === 0 ? (
        <p className="muted small">
          {cached ? "Served from the cache: no partition ran." : pending ? "Shown when the request completes." : "No timings."}
        </p>
      ) : (
        <ul className="bars" data-testid="partition-times">
          {sorted.map(([partition, list], i) => (
            <li key={partition} className="bar-row">
              <span className="bar-label">part {partition}</span>
              <span className="bar-track" aria-hidden="true">
                {list.map((t) => (
                  <span
                    key={t.node}
                    className="bar-fill"
                    style={{ width: `${(t.ms / max) * 100}%`, background: partitionColor(partition) }}
                    title={`${t.node}: ${ms(t.ms)}`}
                  />
                ))}
              </span>
              <span className="bar-value">
                {ms(totals[i])}
                <span className="bar-nodes"> on {list.map((t) => t.node).join(" + ")}</span>
              </span>
            </li>
          ))}
        </ul>
      )}
    </figure>
  );
}
