import { buildClusterPicture, healthLabel, nodeHealth, requestsByNode } from "./cluster";
import { CLUSTER, node } from "./test/fixtures";

describe("the cluster picture", () => {
  it("groups replicas by partition, in order, with each partition's blocks", () => {
    const picture = buildClusterPicture(CLUSTER);
    expect(picture.nLayer).toBe(6);
    expect(picture.partitions.map((p) => [p.partition, p.layers, p.replicas.map((r) => r.id)])).toEqual([
      [0, [0, 3], ["part0-r0", "part0-r1"]],
      [1, [3, 5], ["part1-r0", "part1-r1"]],
      [2, [5, 6], ["part2-r0", "part2-r1"]],
    ]);
    expect(picture.partitions.map((p) => p.holdsHead)).toEqual([false, false, true]);
    expect(picture.partitions.map((p) => p.upReplicas)).toEqual([2, 1, 2]);
    expect([picture.upNodes, picture.totalNodes]).toEqual([5, 6]);
  });

  it("knows a partition's blocks from any replica that reported them", () => {
    const picture = buildClusterPicture({ model: "m", nodes: [node("part0-r0", 0, null, { status: "UNKNOWN" }), node("part0-r1", 0, [0, 4])] });
    expect(picture.partitions[0].layers).toEqual([0, 4]);
    expect(buildClusterPicture({ model: "m", nodes: [node("part0-r0", 0, null)] }).nLayer).toBeNull();
  });

  it("calls a replica up only when it serves with its circuit closed", () => {
    expect(nodeHealth(node("a", 0, null))).toBe("up");
    expect(nodeHealth(node("a", 0, null, { status: "UNREACHABLE" }))).toBe("down");
    expect(nodeHealth(node("a", 0, null, { circuit: "open" }))).toBe("down");
    expect(nodeHealth(node("a", 0, null, { status: "NOT_SERVING" }))).toBe("starting");
    expect(healthLabel(node("a", 0, null, { status: "UNREACHABLE", circuit: "open" }))).toBe("down (unreachable)");
    expect(healthLabel(node("a", 0, null, { status: "UNREACHABLE" }))).toBe("unreachable");
  });

  it("maps each replica to the running requests routed through it", () => {
    const tasks = [
      { request_id: "a", state: "decode", prompt_tokens: 1, generated_tokens: 2, max_tokens: 9, age_s: 1, chain: ["part0-r0", "part1-r1"], replays: 0 },
      { request_id: "b", state: "decode", prompt_tokens: 1, generated_tokens: 2, max_tokens: 9, age_s: 1, chain: ["part0-r0", "part1-r0"], replays: 1 },
    ];
    const map = requestsByNode(tasks);
    expect(map.get("part0-r0")).toEqual(["a", "b"]);
    expect(map.get("part1-r1")).toEqual(["a"]);
    expect(map.has("part2-r0")).toBe(false);
  });
});
