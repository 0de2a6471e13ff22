import { ApiError, describeError, errorFromResponse } from "./errors";

const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });

describe("error messages", () => {
  it("name the field of a 422", async () => {
    const e = await errorFromResponse(json(422, { error: { type: "validation_error", message: "top_p: Input should be less than or equal to 1", param: "top_p" } }));
    expect(describeError(e)).toEqual({ title: "Invalid setting: top_p", detail: "top_p: Input should be less than or equal to 1" });
  });

  it("say a 413 is a prompt too large", async () => {
    const e = await errorFromResponse(
      json(413, { error: { type: "request_too_large", message: "the request body is larger than this gateway's limit of 1048576 bytes" } }),
    );
    expect(describeError(e)).toEqual({
      title: "The prompt is too large",
      detail: "the request body is larger than this gateway's limit of 1048576 bytes. Shorten the prompt.",
    });
  });

  it("say overload (429) and no healthy replica (503) with when to retry", async () => {
    const overloaded = await errorFromResponse(json(429, { error: { type: "overloaded", message: "the queue is full" } }, { "retry-after": "1" }));
    expect(describeError(overloaded)).toEqual({ title: "The cluster is overloaded", detail: "the queue is full. Try again in 1 s." });
    const down = await errorFromResponse(json(503, { error: { type: "unavailable", message: "partition 1 has no usable replica" } }, { "retry-after": "1" }));
    expect(describeError(down).title).toBe("No healthy replica");
    expect(describeError(down).detail).toBe("partition 1 has no usable replica. Try again in 1 s.");
  });

  it("say the API is unreachable, from a failed connection or the proxy's 502", async () => {
    expect(describeError(new ApiError(0, "unreachable", "x")).title).toBe("The API is unreachable");
    const proxied = await errorFromResponse(json(502, { error: { type: "api_unreachable", message: "the splitgpt API at http://127.0.0.1:8000 cannot be reached" } }));
    expect(describeError(proxied)).toEqual({ title: "The API is unreachable", detail: "the splitgpt API at http://127.0.0.1:8000 cannot be reached" });
  });

  it("say the stack is shutting down rather than that a replica is missing", async () => {
    const e = await errorFromResponse(
      json(503, { error: { type: "shutting_down", message: "the gateway is shutting down and this request did not finish within its grace period; retry it" } }, { "retry-after": "1" }),
    );
    expect(describeError(e).title).toBe("The API is shutting down");
  });

  it("name an unknown model, a key that may not manage nodes, and a drain that cannot move its requests", async () => {
    const unknown = await errorFromResponse(json(404, { error: { type: "model_not_found", message: "no model 'third'", param: "model" } }));
    expect(describeError(unknown)).toEqual({ title: "No such model", detail: "no model 'third'." });
    const forbidden = await errorFromResponse(json(403, { error: { type: "forbidden", message: "managing nodes and models needs an admin key" } }));
    expect(describeError(forbidden).title).toBe("This key may not do that");
    const conflict = await errorFromResponse(json(409, { error: { type: "conflict", message: "no other replica of partition 1 can take its sequences" } }));
    expect(describeError(conflict)).toEqual({ title: "Not possible now", detail: "no other replica of partition 1 can take its sequences." });
  });

  it("still say something for a body that is not JSON", async () => {
    const e = await errorFromResponse(new Response("<html>Bad Gateway</html>", { status: 500, statusText: "Internal Server Error" }));
    expect(e).toMatchObject({ status: 500, message: "Internal Server Error" });
    expect(describeError(e).title).toBe("Error 500 (http_error)");
    expect(describeError(new Error("boom"))).toEqual({ title: "Something went wrong in the page", detail: "boom" });
  });
});
