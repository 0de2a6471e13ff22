import { API_DEFAULTS, DEFAULT_SETTINGS, parseStops, toRequestBody } from "./settings";

describe("generation settings", () => {
  it("default to the API's own defaults, so the page sends what curl with only `text` gets", () => {
    // services/splitgpt/api/schemas.py ProcessRequest; the browser test checks them against /openapi.json too.
    expect(API_DEFAULTS).toEqual({ max_tokens: 64, temperature: 0, top_p: 1, top_k: 0, seed: null, stop: null, ignore_eos: false, cache: true });
    expect(toRequestBody("Hello", DEFAULT_SETTINGS)).toEqual({
      text: "Hello",
      max_tokens: 64,
      temperature: 0,
      top_p: 1,
      top_k: 0,
      seed: null,
      stop: null,
      ignore_eos: false,
    });
  });

  it("sends integers as JSON integers and floats as numbers", () => {
    const body = toRequestBody("x", { ...DEFAULT_SETTINGS, maxTokens: "12", temperature: "0.7", topP: "0.9", topK: "40", seed: "7" });
    const json = JSON.parse(JSON.stringify(body));
    expect(json).toMatchObject({ max_tokens: 12, temperature: 0.7, top_p: 0.9, top_k: 40, seed: 7 });
    expect(Number.isInteger(json.max_tokens) && Number.isInteger(json.top_k) && Number.isInteger(json.seed)).toBe(true);
  });

  it("passes what does not parse to the API as typed, for its 422 to name", () => {
    const body = toRequestBody("x", { ...DEFAULT_SETTINGS, maxTokens: "lots", temperature: "" });
    expect(body.max_tokens).toBe("lots");
    expect(body.temperature).toBe("");
    expect(toRequestBody("x", { ...DEFAULT_SETTINGS, maxTokens: "1.5" }).max_tokens).toBe(1.5);
  });

  it("reads one stop string per line, with \\n and \\t escapes", () => {
    expect(parseStops("")).toBeNull();
    expect(parseStops("END\n\\n\\n\nTab\\there\nback\\\\slash")).toEqual(["END", "\n\n", "Tab\there", "back\\slash"]);
  });

  it("sends `cache` only to turn the result cache off", () => {
    expect("cache" in toRequestBody("x", DEFAULT_SETTINGS)).toBe(false);
    expect(toRequestBody("x", { ...DEFAULT_SETTINGS, useCache: false }).cache).toBe(false);
  });

  it("names the model only when one other than the default is picked", () => {
    expect(toRequestBody("x", DEFAULT_SETTINGS)).not.toHaveProperty("model");
    expect(toRequestBody("x", DEFAULT_SETTINGS, null)).not.toHaveProperty("model");
    expect(toRequestBody("x", DEFAULT_SETTINGS, "second")).toMatchObject({ text: "x", model: "second" });
  });
});
