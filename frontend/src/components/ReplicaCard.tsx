import { useEffect, useRef, useState } from "react";
import type { ClusterNode } from "../api/types";
import { healthLabel, nodeHealth, nodeLifecycle } from "../cluster";
import { bytes, count, ms } from "../format";

export type NodeAction = "cordon" | "uncordon" | "drain";

/** What an admin may do to a replica (GET /api/nodes answered 200). */
export interface AdminControls {
  pending: NodeAction | null; // the call in flight for this replica: its buttons wait
  onAction: (node: ClusterNode, action: NodeAction) => void;
}

interface Props {
  node: ClusterNode;
  requestCount: number; // running requests routed through this replica
  servesOwnRequest: boolean; // the page's own request goes through it
  admin?: AdminControls; // absent: not an admin, no buttons
}

export function ReplicaCard({ node, requestCount, servesOwnRequest, admin }: Props) {
  const health = nodeHealth(node);
  const lifecycle = nodeLifecycle(node);
  const probe = healthLabel(node);
  const kvShare = node.kv_max_tokens ? (node.kv_tokens ?? 0) / node.kv_max_tokens : null;
  return (
    <li
      className={`replica replica-${health}${servesOwnRequest ? " replica-own" : ""}`}
      data-testid={`replica-${node.id}`}
      data-health={health}
      data-lifecycle={lifecycle}
      aria-label={`replica ${node.id}: ${lifecycle}${health === "up" ? "" : `, ${probe}`}`}
    >
      <div className="replica-head">
        <span className={`dot dot-${health}`} aria-hidden="true" />
        <strong className="replica-id">{node.id}</strong>
        <span className={`lifecycle lifecycle-${lifecycle}`} data-testid={`lifecycle-${node.id}`} title={`probe: ${probe}`}>
          {lifecycle}
        </span>
      </div>
      <div className="replica-address">{node.address}</div>
      {health !== "up" && <div className={`replica-probe probe-${health}`}>probe: {probe}</div>}
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
        <div title="CPU use of its process, percent of one core, over the last few seconds">
          <dt>cpu</dt>
          <dd data-testid={`cpu-${node.id}`}>{node.cpu_percent === undefined || health === "down" ? "–" : `${Math.round(node.cpu_percent)}%`}</dd>
        </div>
        <div title="running sequences whose chain goes through it">
          <dt>seqs</dt>
          <dd data-testid={`sequences-${node.id}`}>{node.sequences ?? "–"}</dd>
        </div>
        <div
          title={
            node.kv_max_tokens
              ? `KV cache: ${node.kv_tokens ?? 0} of ${node.kv_max_tokens} positions (${Math.round((kvShare ?? 0) * 100)}%)`
              : "KV cache: its budget is not known yet"
          }
        >
          <dt>kv</dt>
          <dd data-testid={`kv-${node.id}`} className={kvShare !== null && kvShare >= 0.9 ? "warn" : undefined}>
            {node.kv_max_tokens ? `${count(node.kv_tokens ?? 0)}/${count(node.kv_max_tokens)}` : "–"}
          </dd>
        </div>
      </dl>
      {kvShare !== null && (
        <span className="kv-bar" aria-hidden="true">
          <span style={{ width: `${Math.min(100, kvShare * 100)}%` }} />
        </span>
      )}
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
      {admin && <ReplicaActions node={node} admin={admin} />}
    </li>
  );
}

/** Cordon or Uncordon, and Drain after a confirmation; both wait while a call for this replica runs. */
function ReplicaActions({ node, admin }: { node: ClusterNode; admin: AdminControls }) {
  const [confirming, setConfirming] = useState(false);
  const cancelRef = useRef<HTMLButtonElement>(null);
  const drainRef = useRef<HTMLButtonElement>(null);
  const wasConfirming = useRef(false);
  useEffect(() => {
    // Focus the safe answer when the question opens, and go back to Drain when it closes.
    if (confirming) cancelRef.current?.focus();
    else if (wasConfirming.current) drainRef.current?.focus();
    wasConfirming.current = confirming;
  }, [confirming]);
  const busy = admin.pending !== null;
  const cordoned = !!node.cordoned;
  if (confirming) {
    return (
      <div className="replica-confirm" role="group" aria-label={`Confirm drain of ${node.id}`}>
        <p>
          Drain <code>{node.id}</code>? Its running requests move to another replica, then it leaves the cluster.
        </p>
        <div className="replica-actions">
          <button
            type="button"
            className="small danger"
            aria-label={`Yes, drain ${node.id}`}
            disabled={busy}
            onClick={() => {
              setConfirming(false);
              admin.onAction(node, "drain");
            }}
          >
            Yes, drain
          </button>
          <button type="button" className="small ghost" ref={cancelRef} aria-label={`Cancel drain of ${node.id}`} onClick={() => setConfirming(false)}>
            Cancel
          </button>
        </div>
      </div>
    );
  }
  const toggle: NodeAction = cordoned ? "uncordon" : "cordon";
  return (
    <div className="replica-actions" aria-busy={busy}>
      <button
        type="button"
        className="small"
        disabled={busy}
        aria-label={`${cordoned ? "Uncordon" : "Cordon"} ${node.id}`}
        title={cordoned ? "take new requests again" : "no new requests go to it; those running on it stay"}
        onClick={() => admin.onAction(node, toggle)}
      >
        {admin.pending === "cordon" ? "Cordoning…" : admin.pending === "uncordon" ? "Uncordoning…" : cordoned ? "Uncordon" : "Cordon"}
      </button>
      <button
        type="button"
        className="small"
        ref={drainRef}
        disabled={busy}
        aria-label={`Drain ${node.id}`}
        title="move its running requests to another replica, then remove it"
        onClick={() => setConfirming(true)}
      >
        {admin.pending === "drain" ? "Draining…" : "Drain"}
      </button>
    </div>
  );
}
