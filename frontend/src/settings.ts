// Generation settings as the form holds them (strings, as typed) and as the API
// takes them. The defaults are the API's own (services/splitgpt/api/schemas.py),
// so "Process Input" with nothing changed does what `curl` with only `text` does.

import type { GenerationRequest } from "./api/types";

export interface SettingsForm {
  maxTokens: string;
  temperature: string;
  topP: string;
  topK: string;
  seed: string; // empty: no seed
  stop: string; // one stop string per line; \n and \t are written as escapes
  ignoreEos: boolean;
  useCache: boolean; // false: the API neither looks the result up nor stores it
}

export const API_DEFAULTS = {
  max_tokens: 64,
  temperature: 0,
  top_p: 1,
  top_k: 0,
  seed: null,
  stop: null,
  ignore_eos: false,
  cache: true,
} as const;

export const DEFAULT_SETTINGS: SettingsForm = {
  maxTokens: String(API_DEFAULTS.max_tokens),
  temperature: String(API_DEFAULTS.temperature),
  topP: String(API_DEFAULTS.top_p),
  topK: String(API_DEFAULTS.top_k),
  seed: "",
  stop: "",
  ignoreEos: API_DEFAULTS.ignore_eos,
  useCache: API_DEFAULTS.cache,
};

// `cache` (and `model`) are sent only when they differ from the API's default, so the body stays what `curl` would send.
export type RequestBody = GenerationRequest & { ignore_eos: boolean; cache?: boolean };

// A field that does not parse as a number goes to the API as typed: the API is
// the one judge of what is valid, and its 422 names the field (the page shows it).
function numberOrRaw(value: string, integer: boolean): number | string {
  const trimmed = value.trim();
  if (trimmed === "") return trimmed;
  const n = Number(trimmed);
  if (Number.isNaN(n)) return trimmed;
  if (integer && !Number.isInteger(n)) return n; // 1.5 for max_tokens: the API says why not
  return n;
}

export function parseStops(text: string): string[] | null {
  const stops = text
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => line.replace(/\\(n|t|\\)/g, (_, c: string) => (c === "n" ? "\n" : c === "t" ? "\t" : "\\")));
  return stops.length ? stops : null;
}

/** `model`: the name picked, or null for the default model, which then goes unnamed (as `curl` without `model`). */
export function toRequestBody(text: string, form: SettingsForm, model: string | null = null): RequestBody {
  const seed = form.seed.trim() === "" ? null : numberOrRaw(form.seed, true);
  return {
    text,
    ...(model ? { model } : {}),
    max_tokens: numberOrRaw(form.maxTokens, true) as number,
    temperature: numberOrRaw(form.temperature, false) as number,
    top_p: numberOrRaw(form.topP, false) as number,
    top_k: numberOrRaw(form.topK, true) as number,
    seed: seed as number | null,
    stop: parseStops(form.stop),
    ignore_eos: form.ignoreEos,
    ...(form.useCache ? {} : { cache: false }),
  };
}
