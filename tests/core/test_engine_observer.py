"""What the engines tell their observer (core.engine_observer): the events the shells' metrics count."""

from __future__ import annotations

import asyncio

import pytest
import torch

from splitgpt.core.engine import GenerationError, GenerationRequest
from splitgpt.core.engine_observer import GenerationObserver, NodeStepObserver
from splitgpt.core.kv_cache import KVCacheStore
from splitgpt.core.node_contract import CacheMiss, NodeFailed, SequenceStep, StepBatch
from splitgpt.core.routing import Replica
from tests.core.test_engine import PROMPTS, collect, make_engine, three_nodes, until


class Recorder(GenerationObserver, NodeStepObserver):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def __getattribute__(self, name):
        hooks = {"admitted", "rejected", "iteration", "replay", "failover", "circuit_opened", "first_token", "next_token",
                 "finished"}  # fmt: skip
        if name in hooks:
            return lambda *args: self.events.append((name, *args))
        return super().__getattribute__(name)

    def named(self, name: str) -> list[tuple]:
        return [e[1:] for e in self.events if e[0] == name]


class StepRecorder(NodeStepObserver):
    def __init__(self) -> None:
        self.steps: list[tuple] = []

    def step(self, prefill_rows, decode_rows, sequences, seconds) -> None:
        self.steps.append((prefill_rows, decode_rows, sequences, seconds))


@pytest.fixture
def cluster(tiny_checkpoint):
    return three_nodes(tiny_checkpoint)


async def test_a_request_reports_admission_tokens_iterations_and_its_finish(cluster):
    seen = Recorder()
    engine = make_engine(cluster, observer=seen, micro_batches=1)
    await collect(engine, GenerationRequest("r", PROMPTS[0], max_tokens=4, ignore_eos=True))
    assert seen.named("admitted") == [(len(PROMPTS[0]),)]
    assert len(seen.named("first_token")) == 1 and len(seen.named("next_token")) == 3
    assert [(reason, n) for reason, n, _ in seen.named("finished")] == [("length", 4)]
    await until(lambda: len(seen.named("iteration")) == 4)  # the last is told once its lane resumes
    iterations = seen.named("iteration")
    assert len(iterations) == 4 and all(size == 1 and lanes == 1 and s > 0 for size, lanes, s in iterations)
    await engine.close()


async def test_steps_are_reported_per_replica_with_the_coordinators_time(cluster):
    class Steps(GenerationObserver):
        def __init__(self) -> None:
            self.calls: list[tuple[int, str]] = []

        def step(self, partition, node_id, seconds):
            self.calls.append((partition, node_id))

    steps = Steps()
    engine = make_engine(cluster, observer=steps)
    await collect(engine, GenerationRequest("s", PROMPTS[1], max_tokens=2, ignore_eos=True))
    assert steps.calls == [(0, "p0"), (1, "p1"), (2, "p2")] * 2
    await engine.close()


async def test_a_lost_cache_is_a_cache_miss_replay_and_a_dead_replica_a_failover(tiny_checkpoint):
    nodes, router = three_nodes(tiny_checkpoint)
    # A second replica of partition 1, out of the rotation until the first one fails.
    spare = Replica("p1b", "inproc:1b", 1, status="NOT_SERVING")
    router.replicas.append(spare)
    nodes["p1b"] = three_nodes(tiny_checkpoint)[0]["p1"]
    seen = Recorder()
    engine = make_engine((nodes, router), observer=seen, micro_batches=1)
    steps = {name: nodes[name].step for name in ("p0", "p1")}

    async def lose_cache_once(batch):
        nodes["p0"].step = steps["p0"]
        raise CacheMiss({batch.sequences[0].session_id: "gone"})

    nodes["p0"].step = lose_cache_once
    await collect(engine, GenerationRequest("m", PROMPTS[0], max_tokens=3, ignore_eos=True))
    assert seen.named("replay") == [("cache_miss",)]

    seen.events.clear()

    async def fail_once(batch):
        nodes["p1"].step = steps["p1"]
        spare.status = "SERVING"
        raise NodeFailed("p1 cut")

    nodes["p1"].step = fail_once
    tokens, finish = await collect(engine, GenerationRequest("f", PROMPTS[1], max_tokens=3, ignore_eos=True))
    assert finish.finish_reason == "length" and len(tokens) == 3
    assert seen.named("failover") == [(1, "p1")]
    assert seen.named("circuit_opened") == [(1, "p1")]
    assert seen.named("replay") == [("moved",)]
    await engine.close()


async def test_overload_and_a_cancel_are_reported(cluster):
    seen = Recorder()
    engine = make_engine(cluster, observer=seen, max_batch_size=1, max_queue=0)
    first = engine.generate(GenerationRequest("a", PROMPTS[0], max_tokens=50, ignore_eos=True))
    await anext(first)
    with pytest.raises(GenerationError):
        await anext(engine.generate(GenerationRequest("b", PROMPTS[1], max_tokens=2)))
    assert seen.named("rejected") == [("overloaded",)]
    await first.aclose()  # the client went away
    await asyncio.sleep(0)
    assert [reason for reason, _, _ in seen.named("finished")] == ["cancelled"]
    await engine.close()


def test_a_node_step_reports_its_prefill_and_decode_rows(cluster):
    nodes, _ = cluster
    engine = nodes["p1"].engine
    engine.observer = seen = StepRecorder()
    d = engine.partition.hidden_size
    engine.step(StepBatch([SequenceStep("x", 0, 5), SequenceStep("y", 0, 1)], torch.zeros(6, d)))
    engine.step(StepBatch([SequenceStep("x", 5, 1), SequenceStep("y", 1, 1)], torch.zeros(2, d)))
    with pytest.raises(CacheMiss):
        engine.step(StepBatch([SequenceStep("z", 3, 1)], torch.zeros(1, d)))
    assert [s[:3] for s in seen.steps] == [(6, 0, 2), (0, 2, 2)]  # a refused step is not reported
    stats = engine.cache.stats()
    assert (stats.sessions, stats.cached_tokens, stats.misses) == (2, 8, 1)
    assert stats.allocated_bytes > 0


def test_kv_stats_count_expirations_and_evictions():
    clock = [0.0]
    store = KVCacheStore(1, 1, 2, torch.float32, torch.device("cpu"), max_tokens=4, ttl_s=10, clock=lambda: clock[0])
    for sid in ("a", "b"):
        for s in store.prepare([(sid, 0, 2)]):
            s.commit(2)
    for s in store.prepare([("c", 0, 2)]):  # over the budget of 4: "a" goes
        s.commit(2)
    clock[0] = 100.0
    store.expire()
    stats = store.stats()
    assert (stats.evictions, stats.expirations, stats.sessions, stats.cached_tokens, stats.allocated_bytes) == (1, 2, 0, 0, 0)
