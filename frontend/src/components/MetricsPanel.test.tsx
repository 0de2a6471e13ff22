// @vitest-environment jsdom
import { render, screen, within } from "@testing-library/react";
import type { Generation } from "../hooks/useGeneration";
import { CLUSTER, RESPONSE } from "../test/fixtures";
import { MetricsPanel } from "./MetricsPanel";

const DONE: Generation = {
  phase: "done",
  requestId: "ui-1",
  prompt: "Hi",
  tokens: [
    { text: " to", atMs: 60 },
    { text: " be", atMs: 80 },
    { text: " found", atMs: 100 },
  ],
  text: RESPONSE.generated_text,
  response: RESPONSE,
  error: null,
  stopping: false,
  elapsedMs: 130,
};

function tile(label: string) {
  return within(screen.getByTestId("metrics")).getByText(label, { selector: "dt" }).nextElementSibling?.textContent;
}

describe("MetricsPanel", () => {
  it("shows the request's timings, tokens and finish reason", () => {
    render(<MetricsPanel generation={DONE} />);
    expect(tile("Total")).toBe("121 ms");
    expect(tile("Tokenize")).toBe("1.3 ms");
    expect(tile("Inference")).toBe("100 ms");
    expect(tile("TTFT")).toBe("60.0 ms");
    expect(tile("Tokens/s")).toBe("30.0"); // 3 tokens in 100 ms of inference
    expect(tile("Prompt tokens")).toBe("5");
    expect(tile("Completion tokens")).toBe("3");
    expect(tile("Finish")).toBe("length");
    expect(screen.queryByText("cached")).toBeNull();
  });

  it("draws one row per partition, naming every node that worked on it", () => {
    render(<MetricsPanel generation={DONE} />);
    const rows = within(screen.getByTestId("partition-times")).getAllByRole("listitem");
    expect(rows.map((r) => r.textContent)).toEqual([
      "part 040.0 ms on part0-r0",
      "part 130.0 ms on part1-r0 + part1-r1",
      "part 235.0 ms on part2-r0",
    ]);
    expect(screen.getByRole("img", { name: "3 tokens; first after 60.0 ms" })).toBeInTheDocument();
  });

  it("badges a cached result, which no partition ran", () => {
    const cached = { ...RESPONSE, cached: true, timings: { ...RESPONSE.timings, inference_ms: 0, partitions: [] } };
    render(<MetricsPanel generation={{ ...DONE, response: cached }} />);
    expect(screen.getByText("cached")).toBeInTheDocument();
    expect(screen.getByText("Served from the cache: no partition ran.")).toBeInTheDocument();
  });

  it("shows the replica each partition runs on while the request streams", () => {
    const running: Generation = { ...DONE, phase: "running", response: null };
    const chain = ["part0-r0", "part1-r1", "part2-r0"].map((id) => CLUSTER.nodes.find((n) => n.id === id)!);
    render(<MetricsPanel generation={running} chain={chain} />);
    const rows = within(screen.getByTestId("running-chain")).getAllByRole("listitem");
    expect(rows.map((r) => r.textContent)).toEqual(["part 04.2 ms on part0-r0", "part 14.2 ms on part1-r1", "part 24.2 ms on part2-r0"]);
    expect(tile("Finish")).toBe("…");
  });
});
