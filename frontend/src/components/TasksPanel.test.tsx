// @vitest-environment jsdom
import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { TasksPanel } from "./TasksPanel";

const TASKS = [
  { request_id: "ui-mine", state: "decode", prompt_tokens: 5, generated_tokens: 7, max_tokens: 64, age_s: 0.42, chain: ["part0-r0", "part1-r1", "part2-r0"], replays: 0 },
  { request_id: "curl-1", state: "prefill", prompt_tokens: 9, generated_tokens: 0, max_tokens: 16, age_s: 0.1, chain: ["part0-r1", "part1-r0", "part2-r1"], replays: 1 },
];

afterEach(() => vi.unstubAllGlobals());

describe("TasksPanel", () => {
  it("lists every running request with its chain of replicas, the page's own marked", () => {
    render(<TasksPanel tasks={{ data: TASKS, error: null, updatedAt: 1 }} ownRequestId="ui-mine" />);
    const rows = screen.getAllByRole("row").slice(1);
    expect(rows).toHaveLength(2);
    expect(rows[0]).toHaveTextContent("yours");
    expect(rows[0]).toHaveTextContent("7/64");
    expect(rows[0]).toHaveTextContent("part0-r0 → part1-r1 → part2-r0");
    expect(rows[1]).not.toHaveTextContent("yours");
  });

  it("cancels a request on the cluster with DELETE /api/tasks/{id}", async () => {
    const fetchMock = vi.fn(async () => new Response(JSON.stringify({ request_id: "curl-1", cancelled: true })));
    vi.stubGlobal("fetch", fetchMock);
    render(<TasksPanel tasks={{ data: TASKS, error: null, updatedAt: 1 }} ownRequestId={null} />);
    await userEvent.setup().click(screen.getByRole("button", { name: "Cancel request curl-1" }));
    expect(fetchMock).toHaveBeenCalledWith("/api/tasks/curl-1", { method: "DELETE" });
    expect(screen.queryByRole("alert")).toBeNull();
  });

  it("says so when the API refuses the cancel", async () => {
    vi.stubGlobal("fetch", vi.fn(async () => { throw new TypeError("Failed to fetch"); }));
    render(<TasksPanel tasks={{ data: TASKS, error: null, updatedAt: 1 }} ownRequestId={null} />);
    await userEvent.setup().click(screen.getByRole("button", { name: "Cancel request ui-mine" }));
    expect(await screen.findByRole("alert")).toHaveTextContent("The API is unreachable");
  });
});
