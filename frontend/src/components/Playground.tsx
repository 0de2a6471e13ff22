import { useState, type FormEvent, type KeyboardEvent } from "react";
import type { ModelInfo } from "../api/types";
import { modelLabel } from "../format";
import type { Generation } from "../hooks/useGeneration";
import { DEFAULT_SETTINGS, toRequestBody, type RequestBody, type SettingsForm } from "../settings";
import { ErrorBanner } from "./ErrorBanner";
import { SettingsPanel } from "./SettingsPanel";

interface Props {
  generation: Generation;
  models?: ModelInfo[] | null; // GET /api/models, the default first; null while not known
  onSubmit: (body: RequestBody) => void;
  onStop: () => void;
}

const EXAMPLE = "The meaning of life is";

export function Playground({ generation, models = null, onSubmit, onStop }: Props) {
  const [prompt, setPrompt] = useState(EXAMPLE);
  const [model, setModel] = useState(""); // "": the default model, sent without a name
  const [settings, setSettings] = useState<SettingsForm>(DEFAULT_SETTINGS);
  const [dismissed, setDismissed] = useState<unknown>(null);
  const running = generation.phase === "running";

  const submit = (e?: FormEvent) => {
    e?.preventDefault();
    if (running) return;
    onSubmit(toRequestBody(prompt, settings, model || null));
  };
  // Ctrl+Enter (Cmd+Enter on a Mac) sends from anywhere in the form.
  const onKeyDown = (e: KeyboardEvent) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) submit();
  };

  const showError = generation.phase === "error" && generation.error !== dismissed;
  return (
    <section className="panel playground" aria-labelledby="playground-title">
      <h2 id="playground-title">Playground</h2>
      {/* noValidate: the API judges every field, and its 422 names the one to fix. */}
      <form onSubmit={submit} onKeyDown={onKeyDown} noValidate>
        <div className="prompt-row">
          <label htmlFor="prompt" className="prompt-label">
            Prompt
          </label>
          <ModelPicker models={models} value={model} onChange={setModel} disabled={running} />
        </div>
        <textarea
          id="prompt"
          name="prompt"
          rows={4}
          value={prompt}
          onChange={(e) => setPrompt(e.target.value)}
          placeholder="Type a prompt, then Process Input (Ctrl+Enter)"
          aria-describedby="prompt-hint"
        />
        <div className="actions">
          <button type="submit" className="primary" disabled={running}>
            Process Input
          </button>
          <button type="button" onClick={onStop} disabled={!running || generation.stopping}>
            {generation.stopping ? "Stopping…" : "Stop"}
          </button>
          <span id="prompt-hint" className="hint">
            Ctrl+Enter sends · streams token by token
          </span>
        </div>
        <SettingsPanel value={settings} onChange={setSettings} disabled={running} />
      </form>
      {showError && <ErrorBanner error={generation.error} onDismiss={() => setDismissed(generation.error)} />}
      <Output generation={generation} />
    </section>
  );
}

function Output({ generation }: { generation: Generation }) {
  const { phase, prompt, text, response } = generation;
  if (phase === "idle") {
    return (
      <p className="output-empty">
        The completion streams in here. Each token goes through every partition of the model, on whichever replica its
        request is routed to.
      </p>
    );
  }
  const finish = response?.finish_reason;
  return (
    <div className="output-wrap">
      <div className="output-head">
        <span>
          Output
          {response?.model && (
            <>
              {" · "}
              <span className="output-model" data-testid="output-model" title={`answered by the model ${response.model}`}>
                {modelLabel(response.model)}
              </span>
            </>
          )}
        </span>
        <span role="status" className={`phase phase-${phase}`} data-testid="generation-status">
          {phase === "running"
            ? generation.stopping
              ? "stopping…"
              : `streaming · ${generation.tokens.length} tokens`
            : phase === "error"
              ? "failed"
              : finish
                ? `finished: ${finish}`
                : "stopped"}
        </span>
      </div>
      <output className="output" aria-live="off" htmlFor="prompt" data-testid="output">
        <span className="output-prompt">{prompt}</span>
        <span className="output-text" data-testid="generated-text">
          {text}
        </span>
        {phase === "running" && <span className="caret" aria-hidden="true" />}
      </output>
    </div>
  );
}

/** Which model runs the prompt: the default first and marked so, a model not ready marked so. */
function ModelPicker({ models, value, onChange, disabled }: { models: ModelInfo[] | null; value: string; onChange: (name: string) => void; disabled: boolean }) {
  const list = models ?? [];
  const [first, ...others] = list;
  // Checkpoint paths are named by their last part, unless two models would then read the same.
  const labels = list.map((m) => modelLabel(m.name));
  const label = (m: ModelInfo) => (labels.filter((l) => l === modelLabel(m.name)).length > 1 ? m.name : modelLabel(m.name));
  const notReady = (m: ModelInfo) => (m.ready ? "" : " (not ready)");
  const chosen = value ? list.find((m) => m.name === value) : first;
  return (
    <div className="model-picker">
      <label htmlFor="model">Model</label>
      <select
        id="model"
        name="model"
        value={value}
        onChange={(e) => onChange(e.target.value)}
        disabled={disabled}
        title={chosen ? `${chosen.name} · checkpoint ${chosen.model_id}` : undefined}
        aria-describedby={chosen && !chosen.ready ? "model-hint" : undefined}
      >
        {/* The default goes unnamed, as a request without `model`, whatever its name. */}
        <option value="">{first ? `${label(first)} (default)${notReady(first)}` : "the default model"}</option>
        {others.map((m) => (
          <option key={m.name} value={m.name}>
            {label(m)}
            {notReady(m)}
          </option>
        ))}
        {value && models && !list.some((m) => m.name === value) && <option value={value}>{value} (not served now)</option>}
      </select>
      {chosen && !chosen.ready && (
        <span id="model-hint" className="hint warn">
          not ready: its nodes are not all serving
        </span>
      )}
    </div>
  );
}
