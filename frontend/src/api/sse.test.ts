import { readSse } from "./sse";

function streamOf(chunks: (string | Uint8Array)[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const c of chunks) controller.enqueue(typeof c === "string" ? encoder.encode(c) : c);
      controller.close();
    },
  });
}

async function collect(stream: ReadableStream<Uint8Array>) {
  const events = [];
  for await (const e of readSse(stream)) events.push(e);
  return events;
}

describe("readSse", () => {
  it("decodes a UTF-8 character split across network chunks", async () => {
    const bytes = new TextEncoder().encode('event: token\ndata: {"text": "é🙂 café"}\n\n');
    const at = bytes.indexOf(0xf0); // the emoji's first byte
    // cut inside é (2 bytes) and twice inside the emoji (4 bytes)
    const cuts = [bytes.indexOf(0xc3) + 1, at + 1, at + 3];
    const chunks = [bytes.slice(0, cuts[0]), bytes.slice(cuts[0], cuts[1]), bytes.slice(cuts[1], cuts[2]), bytes.slice(cuts[2])];
    const events = await collect(streamOf(chunks));
    expect(events).toEqual([{ event: "token", data: '{"text": "é🙂 café"}' }]);
    expect(JSON.parse(events[0].data).text).toBe("é🙂 café");
  });

  it("joins an event split across chunks and splits several in one chunk", async () => {
    const events = await collect(streamOf(["event: tok", "en\ndata: 1\n", "\nevent: token\ndata: 2\n\nevent: done\ndata: {}\n\n"]));
    expect(events.map((e) => `${e.event}:${e.data}`)).toEqual(["token:1", "token:2", "done:{}"]);
  });

  it("takes CRLF line ends, multi-line data and comments, and a last event without its blank line", async () => {
    const events = await collect(streamOf([": keep-alive\r\n\r\ndata: a\r\ndata: b\r\n\r\nevent: done\ndata: x"]));
    expect(events).toEqual([
      { event: "message", data: "a\nb" },
      { event: "done", data: "x" },
    ]);
  });
});
