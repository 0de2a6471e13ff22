"""The coordinator's engine draining a replica (core.engine, _migrate) over real
partition engines in one process: the running sequences' K/V moves to the other
replica, node to node where the target can read the source, through the
coordinator where it cannot, and the tokens are Hugging Face's either way."""

from __future__ import annotations

import asyncio

import pytest

from splitgpt.core.engine import GenerationRequest, TokenEvent
from splitgpt.core.gpt2_partition import GPT2Partition
from splitgpt.core.node_contract import SessionSourceFailed
from splitgpt.core.node_engine import NodeEngine
from splitgpt.core.partitioning import even_split
from splitgpt.core.routing import Replica, Router
from tests.core.test_engine import InProcessNode, hf_greedy, make_engine, until

PROMPTS = [[15496, 11, 616, 1438, 318], [464, 2068, 7586, 21831], [40, 588, 257, 1643, 286, 8887, 290]]
NEW_TOKENS = 40


class MigratingNode(InProcessNode):
    """An in-process node that exports, imports and pulls sessions; `peers` is the
    network it pulls over (address -> node), empty where it reaches no other node."""

    def __init__(self, engine: NodeEngine, peers: dict[str, MigratingNode]) -> None:
        super().__init__(engine)
        self.peers = peers
        self.prefill_rows = 0  # rows this node stepped at position 0: a replay here would show
        self.pulls = self.imports = 0

    async def step(self, batch):
        self.prefill_rows += sum(s.length for s in batch.sequences if s.position == 0)
        return await super().step(batch)

    async def export_session(self, session_id):
        return self.engine.export_session(session_id)

    async def import_session(self, session_id, snapshot):
        self.imports += 1
        return self.engine.import_session(session_id, snapshot)

    async def pull_session(self, session_id, source_address):
        source = self.peers.get(source_address)
        if source is None:
            raise SessionSourceFailed(f"could not connect to {source_address}")
        self.pulls += 1
        return self.engine.import_session(session_id, source.engine.export_session(session_id))


def two_replicas_of_the_middle(checkpoint, reachable: bool):
    """p0, p1a, p1b, p2 of the tiny model (4 blocks in 3 partitions); p1b cordoned, so every
    sequence starts on p1a. `reachable`: whether nodes can read each other's sessions."""
    network: dict[str, MigratingNode] = {}
    ranges = even_split(4, 3)
    layout = {"p0": 0, "p1a": 1, "p1b": 1, "p2": 2}
    nodes = {}
    for node_id, p in layout.items():
        start, end = ranges[p]
        partition = GPT2Partition.from_checkpoint(checkpoint, start, end, p == 2)
        nodes[node_id] = MigratingNode(NodeEngine(partition, kv_max_tokens=4096, kv_ttl_s=600), network)
    if reachable:
        network.update({f"inproc:{node_id}": node for node_id, node in nodes.items()})
    replicas = {node_id: Replica(node_id, f"inproc:{node_id}", p, status="SERVING") for node_id, p in layout.items()}
    replicas["p1b"].cordoned = True
    return nodes, Router(3, list(replicas.values())), replicas


@pytest.mark.parametrize(
    ("reachable", "pull"), [(True, True), (False, True), (True, False)],
    ids=["node-to-node", "unreachable-so-through-the-coordinator", "pull-off-so-through-the-coordinator"],
)  # fmt: skip
async def test_a_drain_moves_every_running_sequence_exactly(tiny_checkpoint, hf_model, reachable, pull):
    nodes, router, replicas = two_replicas_of_the_middle(tiny_checkpoint, reachable)
    engine = make_engine((nodes, router), pull_sessions=pull)
    direct = reachable and pull
    tokens: dict[int, list[int]] = {i: [] for i in range(len(PROMPTS))}

    async def run(i: int) -> None:
        request = GenerationRequest(f"d{i}", PROMPTS[i], max_tokens=NEW_TOKENS, ignore_eos=True)
        async for event in engine.generate(request):
            if isinstance(event, TokenEvent):
                tokens[i].append(event.token_id)

    runs = [asyncio.create_task(run(i)) for i in range(len(PROMPTS))]
    await until(lambda: all(len(t) >= 3 for t in tokens.values()))
    source, target = replicas["p1a"], replicas["p1b"]
    assert engine.sequences_on(source) == len(PROMPTS)
    at_drain = [len(t) for t in tokens.values()]
    target.cordoned = False
    source.cordoned = source.draining = True
    await until(lambda: engine.sequences_on(source) == 0)
    progress = engine.drain_progress(source)
    await asyncio.gather(*runs)
    await engine.close()

    assert max(at_drain) < NEW_TOKENS, "a sequence finished before the drain: nothing to move"
    for i, prompt in enumerate(PROMPTS):
        assert tokens[i] == hf_greedy(hf_model, prompt, NEW_TOKENS)
    assert (progress.moved, progress.recomputed) == (len(PROMPTS), 0)
    assert progress.moved_direct == (len(PROMPTS) if direct else 0)
    assert progress.unpullable == ({"p1b"} if pull and not reachable else set())  # the rest of the drain did not try again
    assert len(progress.pause_ms) == len(PROMPTS)
    moved_in = nodes["p1b"]
    assert (moved_in.pulls, moved_in.imports) == ((len(PROMPTS), 0) if direct else (0, len(PROMPTS)))
    assert moved_in.prefill_rows == 0  # it stepped on from the moved K/V: nothing was recomputed there
    assert len(nodes["p1a"].engine.cache) == 0  # the source let go of every session
