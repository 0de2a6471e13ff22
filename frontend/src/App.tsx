import { useState } from "react";
import { fetchCluster, fetchModels, fetchNodes, fetchTasks } from "./api/client";
import { ApiError } from "./api/errors";
import { ApiKeyPrompt, ForgetKeyButton } from "./components/ApiKeyPrompt";
import { ClusterPanel } from "./components/ClusterPanel";
import { MetricsPanel } from "./components/MetricsPanel";
import { Playground } from "./components/Playground";
import { TasksPanel } from "./components/TasksPanel";
import { useApiKey } from "./hooks/useApiKey";
import { useGeneration } from "./hooks/useGeneration";
import { usePolling } from "./hooks/usePolling";

// Every second: a replica that dies turns red within a probe interval or two.
const POLL_MS = 1000;
// The models served and whether this key may manage nodes change rarely (a rollout, another key).
const SLOW_POLL_MS = 5000;

// Grafana comes with docker-compose.monitoring.yml, on port 3000 of the same host.
function grafanaUrl(): string {
  return `${window.location.protocol}//${window.location.hostname}:3000/d/splitgpt`;
}

export function App() {
  const { state: generation, start, stop } = useGeneration();
  const auth = useApiKey();
  // After a cordon or a drain the cluster is polled at once, so the change shows without waiting.
  const [clusterChanged, setClusterChanged] = useState(0);
  // A new key (or none) polls at once with it, rather than a second later.
  const cluster = usePolling(fetchCluster, POLL_MS, `${auth.key}:${clusterChanged}`);
  const models = usePolling(fetchModels, SLOW_POLL_MS, auth.key);
  // GET /api/nodes answers an admin key (or anyone, without keys) and 403s any other: the buttons follow it.
  const nodes = usePolling(fetchNodes, SLOW_POLL_MS, auth.key);
  const admin = nodes.data != null && nodes.error == null;
  const tasks = usePolling(fetchTasks, POLL_MS, `${generation.requestId}:${generation.phase}:${auth.key}`);
  const apiUp = cluster.error == null && cluster.data != null;
  const keyNeeded = auth.needed || (cluster.error instanceof ApiError && cluster.error.status === 401);
  // The replicas the page's own request runs on now, as the cluster reports them.
  const ownTask = generation.phase === "running" ? tasks.data?.find((t) => t.request_id === generation.requestId) : undefined;
  const ownChain = (ownTask?.chain ?? []).flatMap((id) => cluster.data?.nodes.filter((n) => n.id === id) ?? []);
  return (
    <>
      <a className="skip-link" href="#prompt">
        Skip to the prompt
      </a>
      <header className="topbar">
        <div className="brand">
          <span className="logo" aria-hidden="true">
            <i style={{ background: "#38bdf8" }} />
            <i style={{ background: "#a78bfa" }} />
            <i style={{ background: "#34d399" }} />
          </span>
          <h1>splitgpt</h1>
          <span className="muted model" data-testid="model-name" title={cluster.data?.model}>
            {cluster.data?.model.split("/").filter(Boolean).pop() ?? ""}
          </span>
        </div>
        <nav aria-label="Links">
          <span className={`api-status ${apiUp ? "ok" : cluster.updatedAt || cluster.error ? "bad" : ""}`} role="status">
            <span className={`dot ${apiUp ? "dot-up" : "dot-down"}`} aria-hidden="true" />
            {apiUp ? "API connected" : keyNeeded ? "API key needed" : cluster.error ? "API unreachable" : "connecting…"}
          </span>
          <ForgetKeyButton auth={auth} />
          <a href="/docs" target="_blank" rel="noreferrer">
            API docs
          </a>
          <a href={grafanaUrl()} target="_blank" rel="noreferrer" title="Grafana runs with docker-compose.monitoring.yml">
            Grafana
          </a>
        </nav>
      </header>
      <ApiKeyPrompt auth={auth} />
      <main className="layout">
        {/* Wide: what you send and what runs on the left, where and how long on the right.
            Narrow: one column, in the order of a request (see styles.css). */}
        <div className="column">
          <Playground generation={generation} models={models.data} onSubmit={start} onStop={stop} />
          <TasksPanel tasks={tasks} ownRequestId={generation.requestId} />
        </div>
        <div className="column">
          <ClusterPanel
            cluster={cluster}
            tasks={tasks.data ?? []}
            ownRequestId={generation.phase === "running" ? generation.requestId : null}
            admin={admin}
            onChanged={() => setClusterChanged((n) => n + 1)}
          />
          <MetricsPanel generation={generation} chain={ownChain} />
        </div>
      </main>
    </>
  );
}
