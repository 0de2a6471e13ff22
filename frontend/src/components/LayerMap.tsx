import { useId } from "react";
import type { ClusterPicture } from "../cluster";
import { partitionColor } from "../cluster";

/**
 * The model drawn as its blocks, 0 to n_layer, coloured by the partition that
 * holds them. The embedding and the head sit at the two ends, on the last
 * partition: GPT-2 ties lm_head to wte, so the node that samples also embeds.
 */
export function LayerMap({ picture }: { picture: ClusterPicture }) {
  const { nLayer, partitions } = picture;
  const titleId = useId(); // one map per model's chain: each its own caption
  if (nLayer === null) return <p className="muted">No partition has reported its blocks yet.</p>;
  const owner = (block: number) => partitions.find((p) => p.layers && block >= p.layers[0] && block < p.layers[1]);
  const head = partitions.find((p) => p.holdsHead);
  const cell = (key: string, label: string, title: string, partition: number | undefined, down: boolean) => (
    <span
      key={key}
      className={`layer-cell${down ? " layer-down" : ""}${partition === undefined ? " layer-unknown" : ""}`}
      style={partition === undefined ? undefined : { background: partitionColor(partition) }}
      title={title}
    >
      {label}
    </span>
  );
  const isDown = (p: (typeof partitions)[number] | undefined) => !!p && p.upReplicas === 0;
  return (
    <figure className="layer-map" aria-labelledby={titleId}>
      <figcaption id={titleId}>
        {picture.model.split("/").pop()}: {nLayer} blocks in {partitions.length} partitions
      </figcaption>
      <div
        className="layer-row"
        role="img"
        aria-label={partitions
          .map((p) => `partition ${p.partition}: ${p.layers ? `blocks ${p.layers[0]} to ${p.layers[1] - 1}` : "blocks unknown"}`)
          .join("; ")}
      >
        {cell("emb", "emb", "token + position embedding (wte, wpe)", head?.partition, isDown(head))}
        {Array.from({ length: nLayer }, (_, b) => {
          const p = owner(b);
          return cell(`b${b}`, String(b), `block ${b}${p ? `: partition ${p.partition}` : ""}`, p?.partition, isDown(p));
        })}
        {cell("head", "head", "ln_f + lm_head (tied to wte) + sampling", head?.partition, isDown(head))}
      </div>
      <div className="layer-legend">
        {partitions.map((p) => (
          <span key={p.partition} className="legend-item">
            <span className="swatch" style={{ background: partitionColor(p.partition) }} aria-hidden="true" />
            part {p.partition}: {p.layers ? `[${p.layers[0]}, ${p.layers[1]})` : "?"}
            {p.holdsHead ? " + emb, head" : ""}
          </span>
        ))}
      </div>
    </figure>
  );
}
