// The API key the page sends, kept for this browser tab's session only
// (sessionStorage: gone when the tab closes, never shared with other tabs).
// A 401 from the API asks for one; every call then carries it as a bearer token.

const STORAGE_KEY = "splitgpt.apiKey";

export interface AuthState {
  key: string | null;
  // The API answered 401: no key was sent, or the one sent was refused.
  needed: boolean;
}

type Listener = (state: AuthState) => void;
const listeners = new Set<Listener>();
let needed = false;

function storage(): Storage | null {
  try {
    return typeof sessionStorage === "undefined" ? null : sessionStorage;
  } catch {
    return null; // storage disabled by the browser: the page still works without keys
  }
}

export function getApiKey(): string | null {
  return storage()?.getItem(STORAGE_KEY) || null;
}

export function authState(): AuthState {
  return { key: getApiKey(), needed };
}

function notify(): void {
  const state = authState();
  for (const listener of listeners) listener(state);
}

export function setApiKey(key: string): void {
  storage()?.setItem(STORAGE_KEY, key.trim());
  needed = false;
  notify();
}

export function forgetApiKey(): void {
  storage()?.removeItem(STORAGE_KEY);
  notify();
}

/** The API refused the call for want of a (valid) key. */
export function keyRefused(): void {
  if (needed) return;
  needed = true;
  notify();
}

/** A call went through: whatever asked for a key before is settled (say, keys were turned off). */
export function keyAccepted(): void {
  if (!needed) return;
  needed = false;
  notify();
}

export function subscribe(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** `init` with the stored key as `Authorization: Bearer`; unchanged when there is none. */
export function withApiKey(init?: RequestInit): RequestInit | undefined {
  const key = getApiKey();
  if (!key) return init;
  const headers = new Headers(init?.headers);
  headers.set("authorization", `Bearer ${key}`);
  return { ...init, headers };
}
