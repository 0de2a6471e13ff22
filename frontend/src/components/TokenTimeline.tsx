import type { StreamedToken } from "../hooks/useGeneration";
import { ms } from "../format";

const WIDTH = 320;
const HEIGHT = 56;

/**
 * When each token arrived in this browser: one bar per token, its height the gap
 * since the previous one (the first bar is the time to first token). Spikes are
 * what a user feels: a failover replay, a long prefill, a busy batch.
 */
export function TokenTimeline({ tokens }: { tokens: StreamedToken[] }) {
  const gaps = tokens.map((t, i) => (i === 0 ? t.atMs : t.atMs - tokens[i - 1].atMs));
  const max = Math.max(1, ...gaps);
  const barWidth = gaps.length ? WIDTH / gaps.length : WIDTH;
  const sorted = gaps.slice(1).sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : null;
  return (
    <figure className="chart" aria-labelledby="token-chart-title">
      <figcaption id="token-chart-title">
        Per token: time since the previous one
        {median !== null && <span className="muted"> · median {ms(median)}, max {ms(Math.max(...gaps.slice(1)))}</span>}
      </figcaption>
      {gaps.length === 0 ? (
        <p className="muted small">Waiting for the first token…</p>
      ) : (
        <svg
          className="sparkbars"
          viewBox={`0 0 ${WIDTH} ${HEIGHT}`}
          preserveAspectRatio="none"
          role="img"
          aria-label={`${gaps.length} tokens; first after ${ms(gaps[0])}`}
        >
          {gaps.map((gap, i) => {
            const h = Math.max(1, (gap / max) * (HEIGHT - 2));
            return (
              <rect
                key={i}
                x={i * barWidth}
                y={HEIGHT - h}
                width={Math.max(0.5, barWidth - (barWidth > 3 ? 1 : 0))}
                height={h}
                className={i === 0 ? "spark-first" : "spark"}
              >
                <title>{`token ${i}: ${ms(gap)}`}</title>
              </rect>
            );
          })}
        </svg>
      )}
    </figure>
  );
}
