"""What a sequence recomputes when a cache is lost or can be reused, in one process:
a replica that replaces a failed one rebuilds only its own partition (the others
recompute nothing of the history), and a prompt that starts with blocks an
earlier request computed skips them. Output stays Hugging Face's either way."""

from __future__ import annotations

import pytest

from splitgpt.core.engine import GenerationEngine, GenerationRequest, TokenEvent
from splitgpt.core.engine_observer import GenerationObserver
from splitgpt.core.gpt2_partition import GPT2Partition
from splitgpt.core.node_contract import ChainStepFailed, NodeFailed, StepBatch, StepResult
from splitgpt.core.node_engine import NodeEngine
from splitgpt.core.partitioning import even_split
from splitgpt.core.prefix_cache import BLOCK_TOKENS, PrefixIndex
from splitgpt.core.routing import Replica, Router

from .test_engine import InProcessNode, collect, hf_greedy
from .test_engine_relay import pass_along

PROMPT = [(17 * i + 3) % 5000 for i in range(23)]


class CountingNode(InProcessNode):
    """Counts the rows it computes, as a node's tokens_processed counter does;
    once `dead`, every call fails as a killed process's would, its cache gone."""

    def __init__(self, engine: NodeEngine) -> None:
        super().__init__(engine)
        self.rows = 0
        self.dead = False

    def _alive(self) -> None:
        if self.dead:
            raise NodeFailed("connection refused")

    async def embed(self, items):
        self._alive()
        return await super().embed(items)

    async def step(self, batch):
        self._alive()
        self.rows += batch.hidden.shape[0]
        return await super().step(batch)

    async def outputs(self, session_id, start, end):
        self._alive()
        return await super().outputs(session_id, start, end)


class CountingChain:
    """A ChainClient that steps each node through its client (so a dead one fails
    there, pinned on its index), passing the rows on as relaying nodes do."""

    async def step(self, chain: list[CountingNode], batch: StepBatch) -> StepResult:
        async def step_at(index: int, node: CountingNode, batch: StepBatch) -> StepResult:
            try:
                return await node.step(batch)
            except NodeFailed as exc:
                raise ChainStepFailed(index, exc) from exc

        return await pass_along(chain, batch, step_at)


class Recorder(GenerationObserver):
    def __init__(self) -> None:
        self.rebuilds: list[tuple[int, int]] = []
        self.lookups: list[tuple[int, int]] = []

    def rebuilt(self, partition: int, tokens: int) -> None:
        self.rebuilds.append((partition, tokens))

    def prefix_lookup(self, prompt_tokens: int, reused_tokens: int) -> None:
        self.lookups.append((prompt_tokens, reused_tokens))


def replicated(checkpoint, replicas: int) -> tuple[dict[str, CountingNode], Router]:
    """The tiny model's 4 blocks in 3 partitions, `replicas` of each (p{partition}r{replica})."""
    nodes = {
        f"p{p}r{r}": CountingNode(NodeEngine(GPT2Partition.from_checkpoint(checkpoint, s, e, p == 2), 4096, 600))
        for p, (s, e) in enumerate(even_split(4, 3))
        for r in range(replicas)
    }
    return nodes, Router(3, [Replica(n, n, int(n[1]), status="SERVING") for n in nodes])


def engine_over(nodes, router, relay: bool, **kw) -> GenerationEngine:
    return GenerationEngine(router, lambda r: nodes[r.node_id], 50256, 128, 50257, relay=CountingChain() if relay else None, **kw)


@pytest.mark.parametrize("relay", [False, True], ids=["star", "relay"])
async def test_a_dead_middle_replica_is_rebuilt_alone_and_output_is_unchanged(tiny_checkpoint, hf_model, relay):
    nodes, router = replicated(tiny_checkpoint, 2)
    recorder = Recorder()
    engine = engine_over(nodes, router, relay, observer=recorder)
    tokens, chain = [], []
    async for event in engine.generate(GenerationRequest("f", PROMPT, max_tokens=16, ignore_eos=True)):
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
            if len(tokens) == 6:
                chain = list(engine.tasks()[0]["chain"])
                nodes[chain[1]].dead = True  # killed: its cache is gone with it
    assert tokens == hf_greedy(hf_model, PROMPT, 16)
    first, last = nodes[chain[0]], nodes[chain[2]]
    no_fault = len(PROMPT) + 15  # the prompt, then one row per token after the first
    # The step the replica died in had reached partition 0, which computes it again; nothing else.
    assert first.rows == no_fault + 1 and last.rows == no_fault
    history_at_fault = len(PROMPT) + 5
    assert recorder.rebuilds == [(1, history_at_fault)]
    spare = nodes["p1r1" if chain[1] == "p1r0" else "p1r0"]
    assert spare.rows == history_at_fault + 10  # rebuilt, then the 10 steps left
    await engine.close()


async def test_a_replica_that_lost_its_cache_and_its_predecessors_rebuilds_from_the_embeddings(tiny_checkpoint, hf_model):
    """Partition 0 and 1 both lose the sequence (evicted): partition 1 can't read
    partition 0's outputs, so partition 0 is rebuilt first, from the history's embeddings."""
    nodes, router = replicated(tiny_checkpoint, 1)
    recorder = Recorder()
    engine = engine_over(nodes, router, relay=False, observer=recorder)
    tokens = []
    async for event in engine.generate(GenerationRequest("e", PROMPT, max_tokens=12, ignore_eos=True)):
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
            if len(tokens) == 4:
                nodes["p0r0"].engine.release(["e"])
                nodes["p1r0"].engine.release(["e"])
    assert tokens == hf_greedy(hf_model, PROMPT, 12)
    assert sorted(p for p, _ in recorder.rebuilds) == [0, 1]
    assert nodes["p2r0"].rows == len(PROMPT) + 11  # the last partition recomputed nothing
    await engine.close()


@pytest.mark.parametrize("relay", [False, True], ids=["star", "relay"])
async def test_a_prompt_that_starts_with_an_earlier_ones_blocks_skips_them(tiny_checkpoint, hf_model, relay):
    nodes, router = replicated(tiny_checkpoint, 1)
    recorder = Recorder()
    engine = engine_over(nodes, router, relay, observer=recorder, prefix_index=PrefixIndex())
    shared = PROMPT[:20]
    first, second = shared + [11, 12, 13], shared + [7, 8]
    assert (await collect(engine, GenerationRequest("a", first, max_tokens=6, ignore_eos=True)))[0] == hf_greedy(
        hf_model, first, 6
    )
    before = {n: node.rows for n, node in nodes.items()}
    tokens, _ = await collect(engine, GenerationRequest("b", second, max_tokens=6, ignore_eos=True))
    assert tokens == hf_greedy(hf_model, second, 6)
    reused = BLOCK_TOKENS  # the one full block the two prompts share
    assert recorder.lookups == [(len(first), 0), (len(second), reused)]
    assert all(node.rows - before[n] == len(second) - reused + 5 for n, node in nodes.items())
    await engine.close()


async def test_blocks_a_node_no_longer_keeps_cost_a_full_prefill_not_the_output(tiny_checkpoint, hf_model):
    nodes, router = replicated(tiny_checkpoint, 1)
    index = PrefixIndex()
    engine = engine_over(nodes, router, relay=False, prefix_index=index)
    await collect(engine, GenerationRequest("a", PROMPT, max_tokens=3, ignore_eos=True))
    nodes["p1r0"].engine.cache._prefix.clear()  # evicted, unknown to the coordinator
    tokens, _ = await collect(engine, GenerationRequest("b", PROMPT, max_tokens=8, ignore_eos=True))
    assert tokens == hf_greedy(hf_model, PROMPT, 8)
    assert index.common_prefix(["p1r0"], [b"x" * 16]) == 0  # what it believed of that node is forgotten
    await engine.close()
