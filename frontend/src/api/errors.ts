// Every failure the page can meet, said in one plain sentence with what to do.

export class ApiError extends Error {
  constructor(
    readonly status: number, // 0: the API could not be reached at all
    readonly type: string,
    message: string,
    readonly param?: string | null,
    readonly retryAfterS?: number | null,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** An ApiError from an HTTP answer that is not 2xx, whatever its body holds. */
export async function errorFromResponse(response: Response): Promise<ApiError> {
  const retryHeader = response.headers.get("retry-after");
  const retryAfterS = retryHeader !== null && retryHeader !== "" && !Number.isNaN(Number(retryHeader)) ? Number(retryHeader) : null;
  let type = "http_error";
  let message = "";
  let param: string | null = null;
  try {
    const body = await response.json();
    if (body && typeof body.error === "object" && body.error) {
      type = String(body.error.type ?? type);
      message = String(body.error.message ?? "");
      param = body.error.param ?? null;
    } else if (body && typeof body.detail === "string") {
      message = body.detail;
    }
  } catch {
    // Not JSON: a proxy's error page, say. The status still tells what happened.
  }
  return new ApiError(response.status, type, message || response.statusText || `HTTP ${response.status}`, param, retryAfterS);
}

export function unreachable(cause: unknown): ApiError {
  const detail = cause instanceof Error ? cause.message : String(cause);
  return new ApiError(0, "unreachable", `the API could not be reached (${detail})`);
}

export interface ErrorDescription {
  title: string;
  detail: string;
}

/** What the page says for an error: a title naming the situation, then the API's own words. */
export function describeError(error: unknown): ErrorDescription {
  if (!(error instanceof ApiError)) {
    const detail = error instanceof Error ? error.message : String(error);
    return { title: "Something went wrong in the page", detail };
  }
  const retry = error.retryAfterS ? ` Try again in ${error.retryAfterS} s.` : "";
  const said = sentence(error.message);
  if (error.type === "shutting_down") return { title: "The API is shutting down", detail: said + retry };
  switch (error.status) {
    case 0:
      return {
        title: "The API is unreachable",
        detail: "No answer from the splitgpt API. Is the stack running (`make up` or `make up-tiny`)?",
      };
    case 400:
      return { title: "The request does not fit", detail: error.message };
    case 401:
      return { title: "An API key is needed", detail: `${said} Enter a key above.` };
    case 403:
      return { title: "This key may not do that", detail: said };
    case 404:
      return { title: error.type === "model_not_found" ? "No such model" : "Not found", detail: said };
    case 409:
      return { title: "Not possible now", detail: said };
    case 413:
      return { title: "The prompt is too large", detail: `${said} Shorten the prompt.` };
    case 422:
      return {
        title: error.param ? `Invalid setting: ${error.param}` : "Invalid request",
        detail: error.message,
      };
    case 429:
      if (error.type === "rate_limited" || error.type === "concurrency_limited")
        return { title: "Too many requests for this key", detail: said + retry };
      return { title: "The cluster is overloaded", detail: said + retry };
    case 503:
      return { title: "No healthy replica", detail: said + retry };
    case 504:
      return { title: "The request timed out", detail: error.message };
    case 502:
      return { title: "The API is unreachable", detail: error.message };
    default:
      return { title: `Error ${error.status || ""}`.trim() + (error.type ? ` (${error.type})` : ""), detail: error.message };
  }
}

/** The API's messages are clauses; the page adds its own sentence after them. */
function sentence(message: string): string {
  const trimmed = message.trim();
  return /[.!?]$/.test(trimmed) ? trimmed : `${trimmed}.`;
}
