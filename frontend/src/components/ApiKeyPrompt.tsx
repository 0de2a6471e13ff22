import { type FormEvent, useState } from "react";
import { forgetApiKey, setApiKey } from "../api/auth";
import type { AuthState } from "../api/auth";

/**
 * Asks for an API key when the API answers 401: a labelled password field in a
 * small dialog. The key stays for this tab's session and goes with every call.
 */
export function ApiKeyPrompt({ auth }: { auth: AuthState }) {
  const [draft, setDraft] = useState("");
  if (!auth.needed) return null;
  const submit = (event: FormEvent) => {
    event.preventDefault();
    if (!draft.trim()) return;
    setApiKey(draft);
    setDraft("");
  };
  return (
    <div className="key-prompt" role="dialog" aria-labelledby="key-prompt-title" aria-describedby="key-prompt-help">
      <form onSubmit={submit}>
        <h2 id="key-prompt-title">{auth.key ? "The API refused this key" : "This API needs a key"}</h2>
        <p id="key-prompt-help" className="muted small">
          {auth.key
            ? "Enter another key. It is kept for this tab only and sent with every call."
            : "Enter your API key. It is kept for this tab only and sent with every call."}
        </p>
        <label htmlFor="api-key">API key</label>
        <div className="key-prompt-row">
          <input
            id="api-key"
            type="password"
            autoComplete="off"
            spellCheck={false}
            autoFocus
            value={draft}
            onChange={(e) => setDraft(e.target.value)}
          />
          <button type="submit" disabled={!draft.trim()}>
            Use key
          </button>
        </div>
      </form>
    </div>
  );
}

/** In the top bar while a key is kept: forget it (the next call then asks again). */
export function ForgetKeyButton({ auth }: { auth: AuthState }) {
  if (!auth.key) return null;
  return (
    <button type="button" className="ghost small" onClick={forgetApiKey}>
      Forget API key
    </button>
  );
}
