"""The engine with relay (core.node_contract.ChainClient), in one process: the
same tokens as the star and as Hugging Face, and each kind of chain failure
handled as the star handles a failure of the node it names."""

from __future__ import annotations

import pytest

from splitgpt.core.engine import GenerationEngine, GenerationRequest, TokenEvent
from splitgpt.core.gpt2_partition import GPT2Partition
from splitgpt.core.node_contract import CacheMiss, ChainStepFailed, NodeFailed, StepBatch, StepResult
from splitgpt.core.node_engine import NodeEngine
from splitgpt.core.partitioning import even_split
from splitgpt.core.routing import Replica, Router

from .test_engine import PROMPTS, InProcessNode, collect, hf_greedy, three_nodes


class InProcessChain:
    """A ChainClient over in-process nodes: each passes its rows to the next, as
    shells.relay's nodes do. `fail` (index, cause) fails the next steps at that
    node of the chain, as many times as `fail_times`; index None: a failure
    nothing pins on a node (a deadline)."""

    def __init__(self) -> None:
        self.steps = 0
        self.fail: tuple[int | None, Exception] | None = None
        self.fail_times = 0
        self.by_peer = False

    async def step(self, chain: list[InProcessNode], batch: StepBatch) -> StepResult:
        self.steps += 1

        async def step_at(index: int, node: InProcessNode, batch: StepBatch) -> StepResult:
            if self.fail is not None and self.fail_times and (self.fail[0] in (index, None)):
                self.fail_times -= 1
                raise ChainStepFailed(self.fail[0], self.fail[1], self.by_peer)
            return node.engine.step(batch)  # not the client's step: that one counts a star step

        return await pass_along(chain, batch, step_at)


async def pass_along(chain: list, batch: StepBatch, step_at) -> StepResult:
    """What relaying nodes do, in one process: `await step_at(index, node, batch)` for
    each node in turn, its output rows the next one's input; the last node's
    result, with a compute time for every partition."""
    for index, node in enumerate(chain):
        result = await step_at(index, node, batch)
        if result.hidden is not None:
            batch = StepBatch(batch.sequences, result.hidden, batch.concurrent_steps)
    return StepResult(
        token_ids=result.token_ids,
        logprobs=result.logprobs,
        top_logprobs=result.top_logprobs,
        next_input=result.next_input,
        partition_ms=[0.1] * len(chain),
    )


async def generate_failing_once(
    engine: GenerationEngine, relay: InProcessChain, request: GenerationRequest, after: int, at: int | None, cause: Exception
) -> list[int]:
    """The request's tokens, the relay failing one step at node `at` once `after` tokens came."""
    tokens = []
    async for event in engine.generate(request):
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
            if len(tokens) == after:
                relay.fail, relay.fail_times = (at, cause), 1
    return tokens


def relay_engine(cluster, relay: InProcessChain, **kw) -> GenerationEngine:
    nodes, router = cluster
    return GenerationEngine(router, lambda r: nodes[r.node_id], 50256, 128, 50257, relay=relay, **kw)


@pytest.fixture
def cluster(tiny_checkpoint):
    return three_nodes(tiny_checkpoint)


async def test_relayed_greedy_equals_hf_and_reports_every_partition(cluster, hf_model):
    nodes, _ = cluster
    relay = InProcessChain()
    engine = relay_engine(cluster, relay)
    for i, prompt in enumerate(PROMPTS):
        tokens, finish = await collect(engine, GenerationRequest(f"r{i}", prompt, max_tokens=12, ignore_eos=True))
        assert tokens == hf_greedy(hf_model, prompt, 12)
        assert [t.partition for t in finish.partitions] == [0, 1, 2]
    assert relay.steps >= 36 and all(node.steps == 0 for node in nodes.values())  # nothing went by the star
    await engine.close()


async def test_a_cache_miss_the_chain_pins_on_a_node_replays_exactly(cluster, hf_model):
    relay = InProcessChain()
    engine = relay_engine(cluster, relay)
    request = GenerationRequest("m", PROMPTS[0], max_tokens=10, ignore_eos=True)
    tokens = await generate_failing_once(engine, relay, request, 4, 1, CacheMiss({"m": "evicted"}))
    assert tokens == hf_greedy(hf_model, PROMPTS[0], 10)
    assert engine.tasks() == []
    await engine.close()


async def test_a_failure_pinned_on_nobody_goes_on_in_the_star_exactly(cluster, hf_model):
    """A deadline names no node: the sequence replays in the star, where a
    failure names its node, so a hung node cannot stall it forever."""
    nodes, _ = cluster
    relay = InProcessChain()
    engine = relay_engine(cluster, relay)
    request = GenerationRequest("d", PROMPTS[2], max_tokens=10, ignore_eos=True)
    tokens = await generate_failing_once(engine, relay, request, 3, None, NodeFailed("DEADLINE_EXCEEDED"))
    assert tokens == hf_greedy(hf_model, PROMPTS[2], 10)
    assert nodes["p1"].steps >= 7  # the rest went by the star
    await engine.close()


async def test_a_node_the_chain_pins_a_failure_on_is_failed_over(tiny_checkpoint, hf_model):
    """Two replicas of each of 2 partitions: the failed one's circuit opens, the
    sequence moves to the other replica and replays, output unchanged."""
    engines = {
        f"p{p}r{r}": InProcessNode(NodeEngine(GPT2Partition.from_checkpoint(tiny_checkpoint, s, e, p == 1), 4096, 600))
        for p, (s, e) in enumerate(even_split(4, 2))
        for r in range(2)
    }
    router = Router(2, [Replica(n, n, int(n[1]), status="SERVING") for n in engines])
    relay = InProcessChain()
    engine = GenerationEngine(router, lambda r: engines[r.node_id], 50256, 128, 50257, relay=relay)
    tokens, chains = [], []
    async for event in engine.generate(GenerationRequest("f", PROMPTS[1], max_tokens=16, ignore_eos=True)):
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
            chains.append(engine.tasks()[0]["chain"] if engine.tasks() else None)
            if len(tokens) == 5:
                relay.fail, relay.fail_times = (1, NodeFailed("gone")), 1
    assert tokens == hf_greedy(hf_model, PROMPTS[1], 16)
    failed, last = chains[4][1], [c for c in chains if c][-1]
    assert [r for r in router.replicas if r.node_id == failed][0].consecutive_failures == 1
    assert last[1] != failed and last[0] == chains[4][0]  # only the failed partition moved
    await engine.close()


async def test_a_next_hop_only_a_peer_reports_unreachable_goes_on_in_the_star(cluster, hf_model):
    """A peer's word is not enough to take a node out (the link between the two may
    be what fails): the sequence replays in the star and the node stays in."""
    nodes, router = cluster
    relay = InProcessChain()
    engine = relay_engine(cluster, relay)
    relay.by_peer = True  # read only when a failure is raised
    request = GenerationRequest("p", PROMPTS[0], max_tokens=10, ignore_eos=True)
    tokens = await generate_failing_once(engine, relay, request, 2, 2, NodeFailed("p1 could not relay to p2"))
    assert tokens == hf_greedy(hf_model, PROMPTS[0], 10)
    assert all(r.consecutive_failures == 0 for r in router.replicas)
    assert nodes["p2"].steps >= 7  # the rest went by the star
    await engine.close()
