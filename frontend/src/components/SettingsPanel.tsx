import type { SettingsForm } from "../settings";
import { DEFAULT_SETTINGS } from "../settings";

interface Props {
  value: SettingsForm;
  onChange: (next: SettingsForm) => void;
  disabled: boolean;
}

interface NumberField {
  key: "maxTokens" | "temperature" | "topP" | "topK" | "seed";
  label: string;
  hint: string;
  step: string;
  min: string;
  max?: string;
  placeholder?: string;
}

const FIELDS: NumberField[] = [
  { key: "maxTokens", label: "Max tokens", hint: "tokens to generate at most", step: "1", min: "1" },
  { key: "temperature", label: "Temperature", hint: "0 is greedy", step: "0.1", min: "0", max: "10" },
  { key: "topP", label: "Top-p", hint: "1 turns nucleus sampling off", step: "0.05", min: "0", max: "1" },
  { key: "topK", label: "Top-k", hint: "0 turns top-k off", step: "1", min: "0" },
  { key: "seed", label: "Seed", hint: "makes sampling repeatable", step: "1", min: "0", placeholder: "none" },
];

/** The generation settings; their defaults are the API's own. */
export function SettingsPanel({ value, onChange, disabled }: Props) {
  const changed = JSON.stringify(value) !== JSON.stringify(DEFAULT_SETTINGS);
  return (
    <fieldset className="settings" disabled={disabled}>
      <legend>Generation settings</legend>
      <div className="settings-grid">
        {FIELDS.map((f) => (
          <div key={f.key} className="field" title={f.hint}>
            <label htmlFor={`setting-${f.key}`}>{f.label}</label>
            <input
              id={`setting-${f.key}`}
              type="number"
              inputMode="decimal"
              name={f.key}
              step={f.step}
              min={f.min}
              max={f.max}
              placeholder={f.placeholder}
              value={value[f.key]}
              onChange={(e) => onChange({ ...value, [f.key]: e.target.value })}
              aria-describedby={`hint-${f.key}`}
            />
            <small id={`hint-${f.key}`} className="visually-hidden">
              {f.hint}
            </small>
          </div>
        ))}
        <label className="field field-wide">
          <span>Stop strings</span>
          <textarea
            name="stop"
            rows={1}
            placeholder="one per line, \n for a newline"
            value={value.stop}
            onChange={(e) => onChange({ ...value, stop: e.target.value })}
          />
        </label>
        <label className="check">
          <input
            type="checkbox"
            name="ignoreEos"
            checked={value.ignoreEos}
            onChange={(e) => onChange({ ...value, ignoreEos: e.target.checked })}
          />
          <span>Ignore end-of-text</span>
        </label>
        <label className="check" title="off: the API neither looks the result up in its cache nor stores it">
          <input
            type="checkbox"
            name="useCache"
            checked={value.useCache}
            onChange={(e) => onChange({ ...value, useCache: e.target.checked })}
          />
          <span>Result cache</span>
        </label>
        <button type="button" className="ghost small" onClick={() => onChange(DEFAULT_SETTINGS)} disabled={!changed}>
          Reset to API defaults
        </button>
      </div>
    </fieldset>
  );
}
