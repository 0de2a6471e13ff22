// @vitest-environment jsdom
import { render, screen, within } from "@testing-library/react";
import { CLUSTER } from "../test/fixtures";
import { ClusterPanel } from "./ClusterPanel";
import { ApiError } from "../api/errors";

const TASK = { request_id: "ui-mine", state: "decode", prompt_tokens: 5, generated_tokens: 7, max_tokens: 64, age_s: 0.4, chain: ["part0-r0", "part1-r1", "part2-r0"], replays: 0 };

describe("ClusterPanel", () => {
  it("draws the blocks bar, every partition, and every replica with its health", () => {
    render(<ClusterPanel cluster={{ data: CLUSTER, error: null, updatedAt: Date.now() }} tasks={[TASK]} ownRequestId="ui-mine" />);
    // 6 blocks, plus the embedding and the head at the two ends
    expect(document.querySelectorAll(".layer-cell")).toHaveLength(8);
    expect(screen.getByRole("img", { name: /partition 0: blocks 0 to 2; partition 1: blocks 3 to 4; partition 2: blocks 5 to 5/ })).toBeInTheDocument();
    expect(screen.getByTestId("cluster-summary")).toHaveTextContent("5/6 replicas up");
    for (const n of CLUSTER.nodes) {
      const card = screen.getByTestId(`replica-${n.id}`);
      expect(card).toHaveTextContent(n.address);
    }
    const dead = screen.getByTestId("replica-part1-r0");
    expect(dead).toHaveAttribute("data-health", "down");
    expect(dead).toHaveTextContent("down (unreachable)");
    expect(dead).toHaveTextContent("open (3 fail)");
    expect(screen.getByTestId("replica-part1-r1")).toHaveAttribute("data-health", "up");
    expect(within(screen.getByTestId("replica-part0-r0")).getByText("4.2 ms")).toBeInTheDocument();
    // What each replica holds: its weights and its process's resident memory; unknown while down.
    expect(screen.getByTestId("memory-part0-r0")).toHaveTextContent("weights 1.52 GB · RSS 2.18 GB");
    expect(screen.getByTestId("memory-part1-r0")).toHaveTextContent("weights – · RSS –");
  });

  it("marks the replicas the page's own request runs on", () => {
    render(<ClusterPanel cluster={{ data: CLUSTER, error: null, updatedAt: Date.now() }} tasks={[TASK]} ownRequestId="ui-mine" />);
    const own = [...document.querySelectorAll(".replica-own")].map((el) => el.getAttribute("data-testid"));
    expect(own).toEqual(["replica-part0-r0", "replica-part1-r1", "replica-part2-r0"]);
    expect(screen.getByTestId("replica-part1-r1")).toHaveTextContent("your request");
  });

  it("says the API is unreachable instead of going blank", () => {
    render(<ClusterPanel cluster={{ data: null, error: new ApiError(0, "unreachable", "x"), updatedAt: null }} tasks={[]} ownRequestId={null} />);
    expect(screen.getByRole("alert")).toHaveTextContent("The API is unreachable");
  });
});
