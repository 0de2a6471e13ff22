import { buildClusterPicture, groupByModel, healthLabel, nodeHealth, nodeLifecycle, requestsByNode } from "./cluster";
import { CLUSTER, TWO_MODELS, modelInfo, node } from "./test/fixtures";

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

  it("groups the nodes by model, the default first, each model's partitions in order with their replicas", () => {
    const groups = groupByModel(TWO_MODELS);
    expect(groups.map((g) => [g.name, g.isDefault, g.info?.ready, g.upNodes, g.totalNodes])).toEqual([
      ["models/tiny-gpt2", true, true, 5, 6],
      ["second", false, false, 3, 3],
    ]);
    const chains = groups.map((g) => g.chains.map((c) => c.partitions.map((p) => [p.partition, p.layers, p.replicas.map((r) => r.id)])));
    expect(chains).toEqual([
      [
        [
          [0, [0, 3], ["part0-r0", "part0-r1"]],
          [1, [3, 5], ["part1-r0", "part1-r1"]],
          [2, [5, 6], ["part2-r0", "part2-r1"]],
        ],
      ],
      [
        [
          [0, [0, 2], ["m1-part0-r0"]],
          [1, [2, 4], ["m1-part1-r0", "m1-part1-r1"]],
        ],
      ],
    ]);
    // Each chain is drawn from its own checkpoint's blocks, its head on its own last partition.
    expect(groups[1].chains[0]).toMatchObject({ model: "/ckpt/second-gpt2", nLayer: 4, current: true });
    expect(groups[1].chains[0].partitions.map((p) => p.holdsHead)).toEqual([false, true]);
  });

  it("keeps a listed model with no node, a model the list lacks, and an older gateway's unnamed nodes", () => {
    const groups = groupByModel({
      model: "a",
      models: [modelInfo("a"), modelInfo("empty", { ready: false })],
      nodes: [node("part0-r0", 0, [0, 6], { model: "a" }), node("x-part0-r0", 0, [0, 6], { model: "stray" })],
    });
    expect(groups.map((g) => [g.name, g.totalNodes, g.info !== null])).toEqual([
      ["a", 1, true],
      ["empty", 0, true],
      ["stray", 1, false],
    ]);
    const old = groupByModel({ model: "models/tiny-gpt2", nodes: [node("part0-r0", 0, [0, 6], { model: undefined })] });
    expect(old.map((g) => [g.name, g.isDefault, g.chains[0].model, g.totalNodes])).toEqual([["", true, "models/tiny-gpt2", 1]]);
  });

  it("draws a rollout's two splits of one model apart, the current one first", () => {
    const [group] = groupByModel({
      model: "a",
      models: [modelInfo("a", { split_generation: 1, num_partitions: 2 })],
      nodes: [
        node("part0-r0", 0, [0, 3], { model: "a", split_generation: 0 }),
        node("part1-r0", 1, [3, 6], { model: "a", split_generation: 0 }),
        node("g1-part0", 0, [0, 4], { model: "a", split_generation: 1 }),
        node("g1-part1", 1, [4, 6], { model: "a", split_generation: 1 }),
      ],
    });
    expect(group.chains.map((c) => [c.splitGeneration, c.current, c.partitions.map((p) => p.replicas[0].id)])).toEqual([
      [1, true, ["g1-part0", "g1-part1"]],
      [0, false, ["part0-r0", "part1-r0"]],
    ]);
  });

  it("takes a node's lifecycle from the API, or guesses it from an older one's probe", () => {
    expect(nodeLifecycle(node("a", 0, null, { lifecycle: "busy" }))).toBe("busy");
    expect(nodeLifecycle(node("a", 0, null, { lifecycle: undefined }))).toBe("online");
    expect(nodeLifecycle(node("a", 0, null, { lifecycle: undefined, cordoned: true }))).toBe("cordoned");
    expect(nodeLifecycle(node("a", 0, null, { lifecycle: undefined, status: "UNREACHABLE" }))).toBe("offline");
    expect(nodeLifecycle(node("a", 0, null, { lifecycle: null, circuit: "open" }))).toBe("error");
  });
});
