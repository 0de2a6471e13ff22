"""The coordinator's engine over real partition engines, in one process."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from splitgpt.core.engine import (
    FinishEvent,
    GenerationEngine,
    GenerationError,
    GenerationRequest,
    TokenEvent,
)
from splitgpt.core.gpt2_partition import GPT2Partition
from splitgpt.core.node_contract import NodeFailed, SequenceStep, StepBatch, StepFailed
from splitgpt.core.node_engine import NodeEngine
from splitgpt.core.partitioning import even_split
from splitgpt.core.routing import Replica, Router
from splitgpt.core.sampling import SamplingSpec

PROMPTS = [[15496, 11, 616, 1438, 318], [464, 2068, 7586, 21831], [40, 588, 257, 1643, 286, 8887, 290]]


class InProcessNode:
    """`NodeClient` calling a NodeEngine directly: the same core the gRPC node wraps,
    raising the same contract errors (a CacheMiss goes straight to the engine)."""

    def __init__(self, engine: NodeEngine) -> None:
        self.engine = engine
        self.steps = 0
        self.pieces: list[tuple[str, int, int]] = []  # (session, position, rows) of every step, in order

    async def embed(self, items):
        return self.engine.embed(items)

    async def step(self, batch):
        self.steps += 1
        self.pieces += [(s.session_id, s.position, s.length) for s in batch.sequences]
        return self.engine.step(batch)

    async def release(self, session_ids):
        self.engine.release(session_ids)

    async def outputs(self, session_id, start, end):
        return self.engine.outputs(session_id, start, end)


def three_nodes(checkpoint, kv_max_tokens: int = 4096):
    """Partitions p0, p1, p2 of the tiny model, one replica each, all SERVING."""
    nodes = {
        f"p{i}": InProcessNode(
            NodeEngine(GPT2Partition.from_checkpoint(checkpoint, s, e, i == 2), kv_max_tokens=kv_max_tokens, kv_ttl_s=600)
        )
        for i, (s, e) in enumerate(even_split(4, 3))
    }
    router = Router(3, [Replica(f"p{i}", f"inproc:{i}", i, status="SERVING") for i in range(3)])
    return nodes, router


@pytest.fixture
def cluster(tiny_checkpoint):
    return three_nodes(tiny_checkpoint)


def make_engine(cluster, **kw) -> GenerationEngine:
    nodes, router = cluster
    kw = {"eos_token_id": 50256, "n_ctx": 128, "vocab_size": 50257, **kw}
    return GenerationEngine(router, lambda r: nodes[r.node_id], **kw)


async def collect(engine, req) -> tuple[list[int], FinishEvent]:
    tokens = []
    async for event in engine.generate(req):
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
        else:
            return tokens, event
    raise AssertionError("no finish event")


async def until(condition, timeout_s: float = 5.0) -> None:
    """Wait for `condition` to hold; fail if it still does not after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def hf_greedy(hf_model, prompt, n):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=50256, eos_token_id=None
        )
    return out[0, len(prompt) :].tolist()


async def test_greedy_through_three_partitions_equals_hf(cluster, hf_model):
    engine = make_engine(cluster)
    for i, prompt in enumerate(PROMPTS):
        tokens, finish = await collect(engine, GenerationRequest(f"r{i}", prompt, max_tokens=12, ignore_eos=True))
        assert tokens == hf_greedy(hf_model, prompt, 12)
        assert finish.finish_reason == "length" and finish.completion_tokens == 12
        assert [t.partition for t in finish.partitions] == [0, 1, 2]
    await engine.close()


async def test_concurrent_requests_batch_and_match_their_solo_runs(cluster, hf_model):
    nodes, _ = cluster
    engine = make_engine(cluster, micro_batches=1)
    reqs = [GenerationRequest(f"c{i}", p, max_tokens=10, ignore_eos=True) for i, p in enumerate(PROMPTS * 2)]
    results = await asyncio.gather(*(collect(engine, r) for r in reqs))
    for req, (tokens, _) in zip(reqs, results):
        assert tokens == hf_greedy(hf_model, req.prompt_ids, 10)
    # Six requests of ten tokens in about ten steps per node, not sixty: they shared steps.
    assert nodes["p0"].steps <= 12
    await engine.close()


@pytest.mark.parametrize("lose_after", [1, 5, 9])
async def test_lost_cache_is_replayed_at_any_position_with_identical_output(cluster, hf_model, lose_after):
    nodes, _ = cluster
    engine = make_engine(cluster)
    prompt = PROMPTS[0]
    tokens = []
    async for event in engine.generate(GenerationRequest("lost", prompt, max_tokens=10, ignore_eos=True)):
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
            if len(tokens) == lose_after:
                nodes["p1"].engine.release(["lost"])  # as if evicted or restarted
    assert tokens == hf_greedy(hf_model, prompt, 10)
    await engine.close()


async def test_eos_stops_unless_ignored_and_min_tokens_holds_it_back(cluster, hf_model):
    prompt = PROMPTS[1]
    reference = hf_greedy(hf_model, prompt, 10)
    eos = reference[3]  # pretend the 4th greedy token is end-of-text
    assert eos not in reference[:3]
    tokens, finish = await collect(make_engine(cluster, eos_token_id=eos), GenerationRequest("e1", prompt, 10))
    assert tokens == reference[:3] and finish.finish_reason == "eos" and finish.completion_tokens == 3

    tokens, _ = await collect(make_engine(cluster, eos_token_id=eos), GenerationRequest("e2", prompt, 10, ignore_eos=True))
    assert tokens == reference

    tokens, _ = await collect(make_engine(cluster, eos_token_id=eos), GenerationRequest("e3", prompt, 6, min_tokens=6))
    assert len(tokens) == 6 and eos not in tokens[:6]


async def test_seeded_sampling_is_repeatable(cluster):
    engine = make_engine(cluster)
    spec = SamplingSpec(temperature=1.0, top_k=50, seed=99)
    a, _ = await collect(engine, GenerationRequest("s1", PROMPTS[0], 10, sampling=spec, ignore_eos=True))
    b, _ = await collect(engine, GenerationRequest("s2", PROMPTS[0], 10, sampling=spec, ignore_eos=True))
    assert a == b


async def test_context_overflow_and_bad_ids_are_invalid(cluster):
    engine = make_engine(cluster)
    with pytest.raises(GenerationError, match="by 5") as err:
        await collect(engine, GenerationRequest("x", [1] * 100, max_tokens=33))
    assert err.value.kind == "invalid"
    with pytest.raises(GenerationError, match="vocabulary"):
        await collect(engine, GenerationRequest("y", [70000], max_tokens=3))


async def test_closing_the_stream_cancels_and_frees_every_node(cluster):
    nodes, _ = cluster
    engine = make_engine(cluster)
    stream = engine.generate(GenerationRequest("gone", PROMPTS[0], max_tokens=50, ignore_eos=True))
    async for _ in stream:
        break
    await stream.aclose()
    # Releases run in the background; a cache left behind stays, and fails this.
    await until(lambda: all("gone" not in n.engine.cache for n in nodes.values()))
    await engine.close()


async def test_cancel_during_prefill_leaves_no_cache_behind(cluster):
    """Cancelled while partition 0 prefills: the releases go out at once, so
    the rest of the chain must not be stepped, or its position-0 steps would
    open caches that nothing releases any more."""
    nodes, _ = cluster
    first_node = nodes["p0"]
    step, entered, resume = first_node.step, asyncio.Event(), asyncio.Event()

    async def held_step(batch):
        entered.set()
        await resume.wait()
        return await step(batch)

    first_node.step = held_step
    engine = make_engine(cluster)
    stream = engine.generate(GenerationRequest("mid", PROMPTS[0], max_tokens=50, ignore_eos=True))
    waiting = asyncio.ensure_future(anext(stream))
    await entered.wait()
    assert engine.cancel("mid")
    await asyncio.sleep(0.05)  # the releases run
    resume.set()
    finish = await waiting
    assert isinstance(finish, FinishEvent) and finish.finish_reason == "cancelled"
    # The held step ends and its release runs (later than a fixed sleep on a loaded host).
    await until(lambda: all("mid" not in n.engine.cache for n in nodes.values()))
    await stream.aclose()
    await engine.close()


async def test_no_serving_replica_is_unavailable(cluster):
    nodes, router = cluster
    router.replicas[1].status = "UNREACHABLE"
    with pytest.raises(GenerationError, match="partition 1") as err:
        await collect(make_engine(cluster, unavailable_grace_s=0.2), GenerationRequest("u", PROMPTS[0], 3))
    assert err.value.kind == "unavailable"


async def test_chunked_prefill_equals_hf(cluster, hf_model):
    """A prompt longer than the prefill chunk is fed in pieces; the output does not change."""
    engine = make_engine(cluster, prefill_chunk_tokens=3)
    prompt = PROMPTS[2] * 2  # 14 tokens: five chunks
    tokens, _ = await collect(engine, GenerationRequest("chunked", prompt, max_tokens=8, ignore_eos=True))
    assert tokens == hf_greedy(hf_model, prompt, 8)
    await engine.close()


async def test_a_prompt_is_cut_into_the_same_prefill_chunks_alone_and_under_load(cluster, hf_model):
    """Chunks end at multiples of the chunk size, whatever else shares the iteration: a
    prompt's rows are computed in the same pieces alone and behind other prefills (in
    bfloat16 a prefill split elsewhere rounds its attention otherwise)."""
    nodes, _ = cluster
    long_prompt = PROMPTS[2] * 2  # 14 tokens: chunks of 6, 6 and 2

    def prefill_pieces(sid: str) -> list[tuple[int, int]]:
        return [(pos, n) for s, pos, n in nodes["p0"].pieces if s == sid and pos < len(long_prompt)]

    engine = make_engine(cluster, prefill_chunk_tokens=6, micro_batches=1)  # one batch, one budget
    alone, _ = await collect(engine, GenerationRequest("alone", long_prompt, max_tokens=4, ignore_eos=True))
    # A shorter prompt ahead of it takes 4 of the first iteration's 6 tokens.
    reqs = [GenerationRequest("ahead", PROMPTS[1], max_tokens=4, ignore_eos=True)]
    reqs.append(GenerationRequest("loaded", long_prompt, max_tokens=4, ignore_eos=True))
    results = await asyncio.gather(*(collect(engine, r) for r in reqs))
    assert prefill_pieces("alone") == [(0, 6), (6, 6), (12, 2)]
    assert prefill_pieces("loaded") == prefill_pieces("alone"), nodes["p0"].pieces
    assert results[-1][0] == alone == hf_greedy(hf_model, long_prompt, 4)
    await engine.close()


@pytest.mark.parametrize("micro_batches", [1, 2, 3])
async def test_micro_batches_in_flight_give_the_same_tokens(cluster, hf_model, micro_batches):
    engine = make_engine(cluster, micro_batches=micro_batches)
    reqs = [GenerationRequest(f"m{i}", p, max_tokens=6, ignore_eos=True) for i, p in enumerate(PROMPTS * 2)]
    results = await asyncio.gather(*(collect(engine, r) for r in reqs))
    for req, (tokens, _) in zip(reqs, results):
        assert tokens == hf_greedy(hf_model, req.prompt_ids, 6)
    await engine.close()


async def test_evicted_cache_is_replayed(tiny_checkpoint, hf_model):
    """The KV budget evicts a sequence's cache (LRU); the next step replays it, output unchanged."""
    nodes, router = three_nodes(tiny_checkpoint, kv_max_tokens=100)
    engine = make_engine((nodes, router))
    prompt, tokens = PROMPTS[0], []
    async for event in engine.generate(GenerationRequest("victim", prompt, max_tokens=30, ignore_eos=True)):
        tokens.append(event.token_id) if isinstance(event, TokenEvent) else None
        if len(tokens) == 10:
            # Another session takes 90 of node 1's 100 tokens: the victim's 15 are evicted.
            hog = nodes["p2"].engine.embed([(list(range(1000, 1090)), 0)])[0]
            node0 = nodes["p0"].engine.step(StepBatch([SequenceStep("hog", 0, 90)], hog))
            nodes["p1"].engine.step(StepBatch([SequenceStep("hog", 0, 90)], node0.hidden))
            assert "victim" not in nodes["p1"].engine.cache
            nodes["p1"].engine.release(["hog"])
    assert tokens == hf_greedy(hf_model, prompt, 30)
    await engine.close()


async def test_failed_replica_moves_the_sequence_and_replays(tiny_checkpoint, hf_model):
    """A step that fails on one replica opens its circuit; the sequence continues on the other."""
    ranges = even_split(4, 2)
    engines = {
        f"p{p}r{r}": NodeEngine(GPT2Partition.from_checkpoint(tiny_checkpoint, s, e, p == 1), 4096, 600)
        for p, (s, e) in enumerate(ranges)
        for r in range(2)
    }
    dead: set[str] = set()

    class Flaky(InProcessNode):
        def __init__(self, name):
            super().__init__(engines[name])
            self.name = name

        async def step(self, batch):
            if self.name in dead:
                raise NodeFailed(f"{self.name} is gone")
            return await super().step(batch)

    clients = {name: Flaky(name) for name in engines}
    router = Router(2, [Replica(n, n, int(n[1]), status="SERVING") for n in engines])
    engine = GenerationEngine(router, lambda r: clients[r.node_id], eos_token_id=50256, n_ctx=128, vocab_size=50257)
    prompt, tokens, chains = PROMPTS[1], [], []
    async for event in engine.generate(GenerationRequest("f", prompt, max_tokens=20, ignore_eos=True)):
        if isinstance(event, FinishEvent):
            break
        tokens.append(event.token_id)
        if len(tokens) == 7:
            chains.append(engine.tasks()[0]["chain"])
            dead.update(chains[0])  # kill both replicas in its chain
            killed_at = time.monotonic()
    assert tokens == hf_greedy(hf_model, prompt, 20)
    failed = [r for r in router.replicas if r.node_id in dead]
    # Each opened its circuit once, for the base backoff from its failure on
    # (checked against the clock, not `circuit`: on a loaded host the
    # remaining tokens can take longer than the backoff).
    assert all(r.consecutive_failures == 1 and r.open_until >= killed_at + router.base_backoff_s for r in failed)
    await engine.close()


async def test_cancel_and_overload(cluster):
    engine = make_engine(cluster, max_batch_size=1, max_queue=1)
    first = engine.generate(GenerationRequest("a", PROMPTS[0], max_tokens=50, ignore_eos=True))
    await anext(first)
    second = engine.generate(GenerationRequest("b", PROMPTS[0], max_tokens=5, ignore_eos=True))
    second_task = asyncio.ensure_future(collect(engine, GenerationRequest("b2", PROMPTS[0], 5, ignore_eos=True)))
    await asyncio.sleep(0)
    with pytest.raises(GenerationError) as err:
        await anext(engine.generate(GenerationRequest("c", PROMPTS[0], max_tokens=5)))
    assert err.value.kind == "overloaded"
    assert {t["request_id"] for t in engine.tasks()} == {"a", "b2"}
    assert engine.cancel("a") and not engine.cancel("nope")
    events = [e async for e in first]
    assert isinstance(events[-1], FinishEvent) and events[-1].finish_reason == "cancelled"
    tokens, finish = await second_task
    assert finish.finish_reason == "length" and len(tokens) == 5
    await second.aclose()
    await engine.close()


async def test_one_key_holds_at_most_its_share_of_the_queue_and_another_key_still_gets_in(cluster):
    engine = make_engine(cluster, max_batch_size=2, max_queue=2, max_tenant_share=0.5, micro_batches=1)
    hog = [asyncio.ensure_future(collect(engine, GenerationRequest(f"a{i}", PROMPTS[0], 20, ignore_eos=True, tenant="A")))
           for i in range(2)]  # fmt: skip
    await until(lambda: len(engine.tasks()) == 2)
    with pytest.raises(GenerationError) as err:
        await anext(engine.generate(GenerationRequest("a2", PROMPTS[0], 5, tenant="A")))
    assert err.value.kind == "overloaded" and "share" in str(err.value)
    tokens, finish = await collect(engine, GenerationRequest("b0", PROMPTS[1], 5, ignore_eos=True, tenant="B"))
    assert finish.finish_reason == "length" and len(tokens) == 5
    # without keys (no tenant) nothing is capped but the queue itself
    anonymous = [asyncio.ensure_future(collect(engine, GenerationRequest(f"n{i}", PROMPTS[0], 5, ignore_eos=True)))
                 for i in range(2)]  # fmt: skip
    for done in await asyncio.gather(*hog, *anonymous):
        assert done[1].finish_reason == "length"
    await engine.close()


async def test_a_free_batch_slot_goes_round_robin_between_keys_not_first_come(cluster):
    """One slot, key A queues three requests, then key B one: B runs second, not fourth."""
    engine = make_engine(cluster, max_batch_size=1, max_queue=8, max_tenant_share=1.0, micro_batches=1)
    order: list[str] = []

    async def run(request_id: str, tenant: str, max_tokens: int) -> None:
        await collect(engine, GenerationRequest(request_id, PROMPTS[0], max_tokens, ignore_eos=True, tenant=tenant))
        order.append(request_id)

    tasks = [asyncio.ensure_future(run(f"a{i}", "A", 60)) for i in range(3)]
    await until(lambda: len(engine.tasks()) == 3)
    tasks.append(asyncio.ensure_future(run("b0", "B", 4)))
    await asyncio.gather(*tasks)
    assert order == ["a0", "b0", "a1", "a2"]
    await engine.close()


async def test_steps_tell_nodes_how_many_micro_batches_are_in_flight(cluster):
    """A lone stream's steps say 1 (its node may take every core); with two
    lanes busy the steps say 2 (nodes sharing a host take half each)."""
    nodes, _ = cluster
    seen: list[int] = []
    for node in nodes.values():
        real = node.step

        async def recording(batch, real=real):
            seen.append(batch.concurrent_steps)
            return await real(batch)

        node.step = recording
    engine = make_engine(cluster, micro_batches=2)
    await collect(engine, GenerationRequest("alone", PROMPTS[0], max_tokens=3, ignore_eos=True))
    assert seen and set(seen) == {1}
    seen.clear()
    await asyncio.gather(
        *(collect(engine, GenerationRequest(f"r{i}", p, max_tokens=6, ignore_eos=True)) for i, p in enumerate(PROMPTS[:2]))
    )
    assert 2 in seen and set(seen) <= {1, 2}


async def test_a_malformed_step_fails_its_requests_without_failing_the_node(cluster):
    """A StepInputError is a bug every replica would refuse alike: the requests
    fail at once, and the replica is neither marked failed nor failed over."""
    nodes, router = cluster
    real = nodes["p1"].step

    async def truncating(batch):
        return await real(StepBatch(batch.sequences, batch.hidden[:, :-1], batch.concurrent_steps))

    nodes["p1"].step = truncating
    engine = make_engine(cluster)
    with pytest.raises(GenerationError, match="hidden must be") as err:
        await collect(engine, GenerationRequest("bad", PROMPTS[0], 3))
    assert err.value.kind == "internal"
    assert all(r.consecutive_failures == 0 and r.circuit == "closed" for r in router.replicas)
    await engine.close()


class FailsOnSomeSteps(InProcessNode):
    """The last partition answering INTERNAL (StepFailed) for steps of `poisoned` requests,
    or for the next `transient` steps of any request."""

    def __init__(self, engine: NodeEngine, poisoned: set[str] = frozenset(), transient: int = 0) -> None:
        super().__init__(engine)
        self.poisoned, self.transient = poisoned, transient

    async def step(self, batch):
        if self.transient > 0 or any(s.session_id in self.poisoned for s in batch.sequences):
            self.transient -= 1
            raise StepFailed("internal error in /splitgpt.v1.PartitionNode/Step: the server's log has the details")
        return await super().step(batch)


async def test_a_request_a_node_fails_on_fails_alone_and_the_node_stays_in(cluster, hf_model):
    """A query of death must not take its partition out: before, every failure marked the
    (only) replica down and the request was retried for minutes, failing everyone else."""
    nodes, router = cluster
    nodes["p2"] = FailsOnSomeSteps(nodes["p2"].engine, poisoned={"poison"})
    engine = make_engine(cluster)
    started = time.monotonic()
    with pytest.raises(GenerationError) as failed:
        await collect(engine, GenerationRequest("poison", PROMPTS[0], max_tokens=5, ignore_eos=True))
    assert failed.value.kind == "internal" and "twice" in str(failed.value)
    assert time.monotonic() - started < 5  # one retry, no backoff of a circuit
    assert all(r.status == "SERVING" and r.consecutive_failures == 0 and router.usable(r) for r in router.replicas)
    tokens, _ = await collect(engine, GenerationRequest("fine", PROMPTS[1], max_tokens=6, ignore_eos=True))
    assert tokens == hf_greedy(hf_model, PROMPTS[1], 6)
    await engine.close()


async def test_a_transient_internal_error_is_retried_once_and_the_output_stays_exact(cluster, hf_model):
    nodes, _ = cluster
    nodes["p2"] = FailsOnSomeSteps(nodes["p2"].engine, transient=1)
    engine = make_engine(cluster)
    tokens, finish = await collect(engine, GenerationRequest("t", PROMPTS[2], max_tokens=8, ignore_eos=True))
    assert tokens == hf_greedy(hf_model, PROMPTS[2], 8) and finish.finish_reason == "length"
    await engine.close()
