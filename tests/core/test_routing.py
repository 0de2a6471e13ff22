from __future__ import annotations

import pytest

from splitgpt.core.routing import NoHealthyReplica, Replica, Router


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def router(strategy: str, clock=None) -> Router:
    replicas = [Replica(f"r{i}", f"a{i}", 0, status="SERVING") for i in range(3)]
    return Router(1, replicas, strategy=strategy, clock=clock or Clock())


def test_round_robin_cycles():
    r = router("round_robin")
    assert [r.pick(0).node_id for _ in range(4)] == ["r0", "r1", "r2", "r0"]


def test_least_loaded_takes_the_fewest_in_flight():
    r = router("least_loaded")
    r.replicas[0].in_flight, r.replicas[1].in_flight, r.replicas[2].in_flight = 3, 1, 2
    assert r.pick(0).node_id == "r1"


def test_latency_takes_the_fastest_ewma_and_tries_unmeasured_first():
    r = router("latency")
    r.record_success(r.replicas[0], 30.0)
    r.record_success(r.replicas[1], 10.0)
    assert r.pick(0).node_id == "r2"  # never measured
    r.record_success(r.replicas[2], 50.0)
    assert r.pick(0).node_id == "r1"
    r.record_success(r.replicas[1], 110.0)  # EWMA 0.8 * 10 + 0.2 * 110 = 30
    assert r.replicas[1].latency_ewma_ms == pytest.approx(30.0)


def test_a_failure_opens_the_circuit_with_doubling_backoff_until_a_probe_closes_it():
    clock = Clock()
    r = router("round_robin", clock)
    bad = r.replicas[0]
    r.record_failure(bad)
    assert bad.down.is_set() and not r.usable(bad)
    assert all(r.pick(0) is not bad for _ in range(6))
    assert not r.due_for_probe(bad)
    clock.now += 1.0  # base backoff
    assert r.due_for_probe(bad)
    r.record_probe(bad, "SERVING")
    assert r.usable(bad) and not bad.down.is_set()
    r.record_failure(bad)  # second consecutive failure: 2 s
    clock.now += 1.5
    assert not r.usable(bad)
    clock.now += 0.6
    r.record_probe(bad, "SERVING")
    assert r.usable(bad)
    r.record_success(bad, 5.0)
    assert bad.consecutive_failures == 0


def test_no_usable_replica_names_the_partition():
    r = router("least_loaded")
    for rep in r.replicas:
        r.record_probe(rep, "NOT_SERVING")
    with pytest.raises(NoHealthyReplica, match="partition 0"):
        r.pick(0)
    assert not r.ready()


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="round_robin"):
        Router(1, [], strategy="random")


def test_one_missed_probe_is_not_a_dead_node_but_two_are():
    r = router("round_robin")
    rep = r.replicas[0]
    r.record_probe(rep, "UNREACHABLE")
    assert r.usable(rep)
    r.record_probe(rep, "UNREACHABLE")
    assert not r.usable(rep) and rep.down.is_set()
    r.record_probe(rep, "SERVING")
    assert r.usable(rep)
    r.record_probe(rep, "NOT_SERVING")  # draining: believed at once
    assert not r.usable(rep)
