"""The coordinator's metrics (docs/metrics.md, Coordinator).

Events (iterations, steps, replays, failovers, finishes, token latencies) come
through the engine's observer, on the event loop: each costs a counter bump or
a histogram observation. The batch, the queue and replica health are state,
read from the engine and the router when Prometheus scrapes (on the metrics
thread: only plain attribute reads and list copies).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..core.engine_observer import GenerationObserver
from .metrics_http import process_registry

if TYPE_CHECKING:
    from .served_models import ServedModels

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60, 120)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LANE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16)
FINISH_REASONS = ("eos", "length", "cancelled", "error")


class CoordinatorMetrics(GenerationObserver):
    def __init__(self, models: ServedModels, queue_capacity: int, registry: CollectorRegistry | None = None) -> None:
        """`models`: every model's splits, whose engines (once their model is known) and
        replicas are read at each scrape; `queue_capacity`: each engine's running + waiting
        limit (max_batch_size + max_queue)."""
        self.registry = registry if registry is not None else process_registry("coordinator")
        r = self.registry
        self._batch_size = Histogram("splitgpt_coordinator_batch_size", "Sequences per iteration",
                                     buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        self._lanes = Histogram("splitgpt_coordinator_micro_batches_in_flight",
                                "Lanes inside an iteration when one starts (itself included)",
                                buckets=LANE_BUCKETS, registry=r)  # fmt: skip
        self._iteration = Histogram("splitgpt_coordinator_iteration_duration_seconds",
                                    "One iteration through the whole chain", buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self._step = Histogram("splitgpt_coordinator_step_duration_seconds",
                               "One partition's step: with relay its compute as the node reports it, in the star the call as the coordinator times it (network included)", ["partition", "node"],
                               buckets=STEP_BUCKETS, registry=r)  # fmt: skip
        self._replays = Counter("splitgpt_coordinator_replays_total", "Sequences that lost a cache: a partition rebuilt, or a replay from position 0", ["reason"],
                                registry=r)  # fmt: skip
        self._rebuilt = Counter("splitgpt_coordinator_rebuilt_tokens_total",
                                "Positions recomputed on one partition to rebuild a replica's cache of a sequence "
                                "(the other partitions recompute none)", ["partition"], registry=r)  # fmt: skip
        self._prefix_prompt = Counter("splitgpt_coordinator_prefix_prompt_tokens_total",
                                      "Prompt tokens of prefills from position 0 with prefix reuse on", registry=r)  # fmt: skip
        self._prefix_reused = Counter("splitgpt_coordinator_prefix_reused_tokens_total",
                                      "Of those, tokens whose K/V the nodes kept from earlier requests (not computed)",
                                      registry=r)  # fmt: skip
        self._failovers = Counter("splitgpt_coordinator_failovers_total",
                                  "Step calls that failed on a replica (its sequences move)", ["partition", "node"],
                                  registry=r)  # fmt: skip
        self._circuit_opens = Counter("splitgpt_coordinator_circuit_opens_total", "Circuits opened", ["partition", "node"],
                                      registry=r)  # fmt: skip
        self._rejected = Counter("splitgpt_coordinator_requests_rejected_total", "Requests answered 429 or 503",
                                 ["reason"], registry=r)  # fmt: skip
        self._finished = Counter("splitgpt_coordinator_requests_finished_total", "Requests finished, by finish reason",
                                 ["finish_reason"], registry=r)  # fmt: skip
        self._prompt_tokens = Counter("splitgpt_coordinator_prompt_tokens_total", "Prompt tokens of admitted requests",
                                      registry=r)  # fmt: skip
        self._generation_tokens = Counter("splitgpt_coordinator_generation_tokens_total", "Tokens generated",
                                          registry=r)  # fmt: skip
        self._ttft = Histogram("splitgpt_coordinator_time_to_first_token_seconds", "Admission to the first token",
                               buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self._tpot = Histogram("splitgpt_coordinator_time_per_output_token_seconds", "Gap between a request's tokens",
                               buckets=TOKEN_GAP_BUCKETS, registry=r)  # fmt: skip
        self._e2e = Histogram("splitgpt_coordinator_e2e_request_latency_seconds", "Admission to finish",
                              buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        # Series that exist from the start, so rates and alerts see zeros rather than nothing.
        for reason in ("cache_miss", "moved", "step_failed"):
            self._replays.labels(reason)
        for partition in range(max(c.router.num_partitions for c in models.clusters())):
            self._rebuilt.labels(str(partition))
        for reason in ("overloaded", "tenant_share", "unavailable"):
            self._rejected.labels(reason)
        self._finished_by_reason = {reason: self._finished.labels(reason) for reason in FINISH_REASONS}
        self._step_by_replica: dict[tuple[int, str], Histogram] = {}
        self._migrations = Counter("splitgpt_coordinator_migrations_total",
                                   "Sequences moved off a draining replica: K/V transferred, or rebuilt on the target",
                                   ["partition", "outcome"], registry=r)  # fmt: skip
        self._migration_pause = Histogram("splitgpt_coordinator_migration_pause_seconds",
                                          "How long a sequence moved off a draining replica did not step",
                                          buckets=STEP_BUCKETS, registry=r)  # fmt: skip
        r.register(_CoordinatorState(models, queue_capacity))

    # GenerationObserver: on the event loop.
    def admitted(self, prompt_tokens: int) -> None:
        self._prompt_tokens.inc(prompt_tokens)

    def rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def iteration(self, sequences: int, lanes_in_flight: int, seconds: float) -> None:
        self._batch_size.observe(sequences)
        self._lanes.observe(lanes_in_flight)
        self._iteration.observe(seconds)

    def step(self, partition: int, node_id: str, seconds: float) -> None:
        child = self._step_by_replica.get((partition, node_id))
        if child is None:
            child = self._step_by_replica[partition, node_id] = self._step.labels(str(partition), node_id)
        child.observe(seconds)

    def replay(self, reason: str) -> None:
        self._replays.labels(reason).inc()

    def rebuilt(self, partition: int, tokens: int) -> None:
        self._rebuilt.labels(str(partition)).inc(tokens)

    def prefix_lookup(self, prompt_tokens: int, reused_tokens: int) -> None:
        self._prefix_prompt.inc(prompt_tokens)
        if reused_tokens:
            self._prefix_reused.inc(reused_tokens)

    def migrated(self, partition: int, seconds: float, transferred: bool) -> None:
        self._migrations.labels(str(partition), "transferred" if transferred else "rebuilt").inc()
        if transferred:
            self._migration_pause.observe(seconds)

    def failover(self, partition: int, node_id: str) -> None:
        self._failovers.labels(str(partition), node_id).inc()

    def circuit_opened(self, partition: int, node_id: str) -> None:
        self._circuit_opens.labels(str(partition), node_id).inc()

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def next_token(self, seconds: float) -> None:
        self._tpot.observe(seconds)

    def finished(self, reason: str, generated_tokens: int, seconds: float) -> None:
        child = self._finished_by_reason.get(reason) or self._finished.labels(reason)
        child.inc()
        if generated_tokens:
            self._generation_tokens.inc(generated_tokens)
        self._e2e.observe(seconds)


class _CoordinatorState(Collector):
    def __init__(self, models: ServedModels, queue_capacity: int) -> None:
        self.models, self.queue_capacity = models, queue_capacity

    def collect(self) -> Iterator[Metric]:
        splits = list(self.models.splits())
        engines = [s.engine for _, s in splits if s.engine is not None]
        for name, documentation, value in (
            ("splitgpt_coordinator_requests_running", "Sequences in the running batch", sum(e.sequences_running for e in engines)),
            ("splitgpt_coordinator_requests_waiting", "Sequences queued for a lane", sum(e.sequences_waiting for e in engines)),
            ("splitgpt_coordinator_queue_capacity", "Running + waiting beyond which requests get 429 (per model)",
             self.queue_capacity),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, documentation, value=value)
        healthy = GaugeMetricFamily(
            "splitgpt_coordinator_replica_healthy", "1 while the replica is usable (probe SERVING, circuit closed)",
            labels=["partition", "node", "model"],
        )  # fmt: skip
        for model, split in splits:
            router = split.cluster.router
            for replica in list(router.replicas):
                healthy.add_metric([str(replica.partition), replica.node_id, model.name], 1.0 if router.usable(replica) else 0.0)
        yield healthy
