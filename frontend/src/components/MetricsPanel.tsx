import type { ClusterNode } from "../api/types";
import type { Generation } from "../hooks/useGeneration";
import { ms, rate } from "../format";
import { PartitionTimeChart } from "./PartitionTimeChart";
import { RunningChain } from "./RunningChain";
import { TokenTimeline } from "./TokenTimeline";

/**
 * The numbers of the page's latest request: live while it streams, the API's own when it is done.
 * `chain`: the replicas it runs on now, one per partition (empty when not known or not running).
 */
export function MetricsPanel({ generation, chain = [] }: { generation: Generation; chain?: ClusterNode[] }) {
  const { response, tokens, phase } = generation;
  const ttft = tokens.length ? tokens[0].atMs : null;
  const last = tokens.length ? tokens[tokens.length - 1].atMs : null;
  const liveRate = tokens.length > 1 && ttft !== null && last !== null ? ((tokens.length - 1) * 1000) / (last - ttft) : null;
  const serverRate =
    response && response.timings.inference_ms > 0 ? (response.usage.completion_tokens * 1000) / response.timings.inference_ms : null;

  const tiles: { label: string; value: string; title: string }[] = [
    { label: "Total", value: ms(response?.timings.total_ms), title: "the API's time for the whole request" },
    { label: "Tokenize", value: ms(response?.timings.tokenize_ms), title: "encoding the prompt (tokenizer service)" },
    { label: "Inference", value: ms(response?.timings.inference_ms), title: "generation across the partitions" },
    { label: "TTFT", value: ms(ttft), title: "time to first token, measured in this browser" },
    {
      label: "Tokens/s",
      value: rate(serverRate ?? liveRate),
      title: "completion tokens per second of inference (live: between the first and the latest token)",
    },
    { label: "Prompt tokens", value: response ? String(response.usage.prompt_tokens) : "–", title: "tokens in the prompt" },
    {
      label: "Completion tokens",
      value: response ? String(response.usage.completion_tokens) : tokens.length ? String(tokens.length) : "–",
      title: "tokens generated",
    },
    { label: "Finish", value: response?.finish_reason ?? (phase === "running" ? "…" : "–"), title: "why generation ended" },
  ];

  return (
    <section className="panel metrics" aria-labelledby="metrics-title">
      <div className="panel-head">
        <h2 id="metrics-title">Request metrics</h2>
        {response?.cached && (
          <span className="badge badge-cached" title="the result came from the API's cache: no node ran">
            cached
          </span>
        )}
        {generation.requestId && (
          <code className="request-id" title="X-Request-ID of this request">
            {generation.requestId}
          </code>
        )}
      </div>
      {phase === "idle" ? (
        <p className="muted">Metrics of each request show here: timings, token counts, and where each partition ran.</p>
      ) : (
        <>
          <dl className="tiles" data-testid="metrics">
            {tiles.map((t) => (
              <div key={t.label} className="tile" title={t.title}>
                <dt>{t.label}</dt>
                <dd>{t.value}</dd>
              </div>
            ))}
          </dl>
          <div className="charts">
            {phase === "running" && chain.length > 0 ? (
              <RunningChain chain={chain} />
            ) : (
              <PartitionTimeChart partitions={response?.timings.partitions ?? []} cached={!!response?.cached} pending={!response} />
            )}
            <TokenTimeline tokens={tokens} />
          </div>
        </>
      )}
    </section>
  );
}
