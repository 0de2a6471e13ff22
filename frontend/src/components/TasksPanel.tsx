import { useState } from "react";
import { cancelTask } from "../api/client";
import type { Task } from "../api/types";
import { shortId } from "../format";
import type { Polled } from "../hooks/usePolling";
import { ErrorBanner } from "./ErrorBanner";

interface Props {
  tasks: Polled<Task[]>;
  ownRequestId: string | null;
}

/** Requests generating now (with API keys: this key's own, every key's for an admin key): the chain of
 * replicas each runs on, and a Cancel. */
export function TasksPanel({ tasks, ownRequestId }: Props) {
  const [cancelError, setCancelError] = useState<unknown>(null);
  const list = tasks.data ?? [];
  const cancel = async (id: string) => {
    setCancelError(null);
    try {
      await cancelTask(id);
    } catch (error) {
      setCancelError(error);
    }
  };
  return (
    <section className="panel tasks" aria-labelledby="tasks-title">
      <div className="panel-head">
        <h2 id="tasks-title">Running requests</h2>
        <span className="badge">{list.length}</span>
      </div>
      {cancelError != null && <ErrorBanner error={cancelError} onDismiss={() => setCancelError(null)} />}
      {list.length === 0 ? (
        <p className="muted small">None right now. A request shows here, with its chain of replicas, while it generates.</p>
      ) : (
        <div className="table-scroll">
          <table data-testid="tasks-table">
            <thead>
              <tr>
                <th scope="col">request</th>
                <th scope="col">state</th>
                <th scope="col">tokens</th>
                <th scope="col">age</th>
                <th scope="col">chain</th>
                <th scope="col">replays</th>
                <th scope="col">
                  <span className="visually-hidden">actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {list.map((t) => (
                <tr key={t.request_id} className={t.request_id === ownRequestId ? "own" : undefined}>
                  <td>
                    <code title={t.request_id}>{shortId(t.request_id)}</code>
                    {t.request_id === ownRequestId && <span className="badge badge-own">yours</span>}
                  </td>
                  <td>{t.state.toLowerCase()}</td>
                  <td>
                    {t.generated_tokens}/{t.max_tokens}
                  </td>
                  <td>{t.age_s.toFixed(1)} s</td>
                  <td className="chain">{t.chain.join(" → ") || "–"}</td>
                  <td>{t.replays}</td>
                  <td>
                    <button type="button" className="small" onClick={() => cancel(t.request_id)} aria-label={`Cancel request ${t.request_id}`}>
                      Cancel
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
