"""The coordinator's metrics (docs/metrics.md, Coordinator).

Events (iterations, steps, replays, failovers, finishes, token latencies) come
through the engine's observer, on the event loop: each costs a counter bump or
a histogram observation. Every engine of a model (one per split) reports to that
model's observer (`CoordinatorMetrics.for_model`), whose series carry `model`,
the served model's configured name. The batch, the queue and replica health are
state, read per model from the engines and the routers when Prometheus scrapes
(on the metrics thread: only plain attribute reads and list copies).
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
REPLAY_REASONS = ("cache_miss", "moved", "step_failed")
REJECT_REASONS = ("overloaded", "tenant_share", "unavailable")


class CoordinatorMetrics:
    """The coordinator's families. Every request and step family carries `model`, the
    served model's configured name; `for_model(name)` is that model's observer, whose
    series are bound once, so an event costs no label lookup."""

    def __init__(self, models: ServedModels, queue_capacity: int, registry: CollectorRegistry | None = None) -> None:
        """`models`: every model's splits, whose engines (once their model is known) and
        replicas are read at each scrape; `queue_capacity`: each engine's running + waiting
        limit (max_batch_size + max_queue)."""
        self.registry = registry if registry is not None else process_registry("coordinator")
        r = self.registry
        m = ["model"]
        self.batch_size = Histogram("splitgpt_coordinator_batch_size", "Sequences per iteration", m,
                                    buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        self.lanes = Histogram("splitgpt_coordinator_micro_batches_in_flight",
                               "Lanes inside an iteration when one starts (itself included)", m,
                               buckets=LANE_BUCKETS, registry=r)  # fmt: skip
        self.iteration = Histogram("splitgpt_coordinator_iteration_duration_seconds",
                                   "One iteration through the whole chain", m, buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.step = Histogram("splitgpt_coordinator_step_duration_seconds",
                              "One partition's step: with relay its compute as the node reports it, in the star the call as the coordinator times it (network included)", ["partition", "node", *m],
                              buckets=STEP_BUCKETS, registry=r)  # fmt: skip
        self.replays = Counter("splitgpt_coordinator_replays_total", "Sequences that lost a cache: a partition rebuilt, or a replay from position 0", ["reason", *m],
                               registry=r)  # fmt: skip
        self.rebuilt = Counter("splitgpt_coordinator_rebuilt_tokens_total",
                               "Positions recomputed on one partition to rebuild a replica's cache of a sequence "
                               "(the other partitions recompute none)", ["partition", *m], registry=r)  # fmt: skip
        self.prefix_prompt = Counter("splitgpt_coordinator_prefix_prompt_tokens_total",
                                     "Prompt tokens of prefills from position 0 with prefix reuse on", m, registry=r)  # fmt: skip
        self.prefix_reused = Counter("splitgpt_coordinator_prefix_reused_tokens_total",
                                     "Of those, tokens whose K/V the nodes kept from earlier requests (not computed)", m,
                                     registry=r)  # fmt: skip
        self.failovers = Counter("splitgpt_coordinator_failovers_total",
                                 "Step calls that failed on a replica (its sequences move)", ["partition", "node", *m],
                                 registry=r)  # fmt: skip
        self.circuit_opens = Counter("splitgpt_coordinator_circuit_opens_total", "Circuits opened", ["partition", "node", *m],
                                     registry=r)  # fmt: skip
        self.rejected = Counter("splitgpt_coordinator_requests_rejected_total", "Requests answered 429 or 503",
                                ["reason", *m], registry=r)  # fmt: skip
        self.finished = Counter("splitgpt_coordinator_requests_finished_total", "Requests finished, by finish reason",
                                ["finish_reason", *m], registry=r)  # fmt: skip
        self.prompt_tokens = Counter("splitgpt_coordinator_prompt_tokens_total", "Prompt tokens of admitted requests", m,
                                     registry=r)  # fmt: skip
        self.generation_tokens = Counter("splitgpt_coordinator_generation_tokens_total", "Tokens generated", m,
                                         registry=r)  # fmt: skip
        self.ttft = Histogram("splitgpt_coordinator_time_to_first_token_seconds", "Admission to the first token", m,
                              buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.tpot = Histogram("splitgpt_coordinator_time_per_output_token_seconds", "Gap between a request's tokens", m,
                              buckets=TOKEN_GAP_BUCKETS, registry=r)  # fmt: skip
        self.e2e = Histogram("splitgpt_coordinator_e2e_request_latency_seconds", "Admission to finish", m,
                             buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.migrations = Counter("splitgpt_coordinator_migrations_total",
                                  "Sequences moved off a draining replica: K/V transferred, or rebuilt on the target",
                                  ["partition", "outcome", *m], registry=r)  # fmt: skip
        self.migration_pause = Histogram("splitgpt_coordinator_migration_pause_seconds",
                                         "How long a sequence moved off a draining replica did not step", m,
                                         buckets=STEP_BUCKETS, registry=r)  # fmt: skip
        self._models: dict[str, ModelObserver] = {}
        # Every configured model's series exist from the start, so rates and alerts see
        # zeros rather than nothing (and a dashboard's model variable lists them all).
        for name, model in models.models.items():
            self.for_model(name, max(s.cluster.router.num_partitions for s in model.splits))
        r.register(_CoordinatorState(models, queue_capacity))

    def for_model(self, name: str, partitions: int = 0) -> ModelObserver:
        """The observer of the model served as `name` (a configured name, never one a
        request gave: an unknown model is refused first), the same one for every split."""
        observer = self._models.get(name)
        if observer is None:
            observer = self._models[name] = ModelObserver(self, name, partitions)
        return observer


class ModelObserver(GenerationObserver):
    """One model's events, on the event loop: its series bound once, here."""

    def __init__(self, metrics: CoordinatorMetrics, model: str, partitions: int) -> None:
        self._metrics, self.model = metrics, model
        c = metrics
        self._batch_size = c.batch_size.labels(model)
        self._lanes = c.lanes.labels(model)
        self._iteration = c.iteration.labels(model)
        self._prefix_prompt = c.prefix_prompt.labels(model)
        self._prefix_reused = c.prefix_reused.labels(model)
        self._prompt_tokens = c.prompt_tokens.labels(model)
        self._generation_tokens = c.generation_tokens.labels(model)
        self._ttft = c.ttft.labels(model)
        self._tpot = c.tpot.labels(model)
        self._e2e = c.e2e.labels(model)
        self._migration_pause = c.migration_pause.labels(model)
        self._replays = {reason: c.replays.labels(reason, model) for reason in REPLAY_REASONS}
        self._rejected = {reason: c.rejected.labels(reason, model) for reason in REJECT_REASONS}
        self._finished = {reason: c.finished.labels(reason, model) for reason in FINISH_REASONS}
        self._rebuilt = {partition: c.rebuilt.labels(str(partition), model) for partition in range(partitions)}
        # Zeros from the start, as the others: a drain's first move then shows in rate().
        self._migrations = {
            (partition, outcome): c.migrations.labels(str(partition), outcome, model)
            for partition in range(partitions)
            for outcome in ("transferred", "rebuilt")
        }
        self._step: dict[tuple[int, str], Histogram] = {}

    def admitted(self, prompt_tokens: int) -> None:
        self._prompt_tokens.inc(prompt_tokens)

    def rejected(self, reason: str) -> None:
        child = self._rejected.get(reason) or self._metrics.rejected.labels(reason, self.model)
        child.inc()

    def iteration(self, sequences: int, lanes_in_flight: int, seconds: float) -> None:
        self._batch_size.observe(sequences)
        self._lanes.observe(lanes_in_flight)
        self._iteration.observe(seconds)

    def step(self, partition: int, node_id: str, seconds: float) -> None:
        child = self._step.get((partition, node_id))
        if child is None:
            child = self._step[partition, node_id] = self._metrics.step.labels(str(partition), node_id, self.model)
        child.observe(seconds)

    def replay(self, reason: str) -> None:
        child = self._replays.get(reason) or self._metrics.replays.labels(reason, self.model)
        child.inc()

    def rebuilt(self, partition: int, tokens: int) -> None:
        child = self._rebuilt.get(partition)
        if child is None:  # a rollout's split with more partitions
            child = self._rebuilt[partition] = self._metrics.rebuilt.labels(str(partition), self.model)
        child.inc(tokens)

    def prefix_lookup(self, prompt_tokens: int, reused_tokens: int) -> None:
        self._prefix_prompt.inc(prompt_tokens)
        if reused_tokens:
            self._prefix_reused.inc(reused_tokens)

    def migrated(self, partition: int, seconds: float, transferred: bool) -> None:
        outcome = "transferred" if transferred else "rebuilt"
        child = self._migrations.get((partition, outcome)) or self._metrics.migrations.labels(str(partition), outcome, self.model)
        child.inc()
        if transferred:
            self._migration_pause.observe(seconds)

    def failover(self, partition: int, node_id: str) -> None:
        self._metrics.failovers.labels(str(partition), node_id, self.model).inc()

    def circuit_opened(self, partition: int, node_id: str) -> None:
        self._metrics.circuit_opens.labels(str(partition), node_id, self.model).inc()

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def next_token(self, seconds: float) -> None:
        self._tpot.observe(seconds)

    def finished(self, reason: str, generated_tokens: int, seconds: float) -> None:
        child = self._finished.get(reason) or self._metrics.finished.labels(reason, self.model)
        child.inc()
        if generated_tokens:
            self._generation_tokens.inc(generated_tokens)
        self._e2e.observe(seconds)


class _CoordinatorState(Collector):
    def __init__(self, models: ServedModels, queue_capacity: int) -> None:
        self.models, self.queue_capacity = models, queue_capacity

    def collect(self) -> Iterator[Metric]:
        models = list(self.models.models.values())
        running = GaugeMetricFamily("splitgpt_coordinator_requests_running", "Sequences in the running batch", labels=["model"])
        waiting = GaugeMetricFamily("splitgpt_coordinator_requests_waiting", "Sequences queued for a lane", labels=["model"])
        capacity = GaugeMetricFamily("splitgpt_coordinator_queue_capacity",
                                     "Running + waiting beyond which a model's requests get 429", labels=["model"])  # fmt: skip
        healthy = GaugeMetricFamily(
            "splitgpt_coordinator_replica_healthy", "1 while the replica is usable (probe SERVING, circuit closed)",
            labels=["partition", "node", "model"],
        )  # fmt: skip
        for model in models:
            splits = list(model.splits)
            engines = [s.engine for s in splits if s.engine is not None]
            running.add_metric([model.name], sum(e.sequences_running for e in engines))
            waiting.add_metric([model.name], sum(e.sequences_waiting for e in engines))
            capacity.add_metric([model.name], self.queue_capacity)
            for split in splits:
                router = split.cluster.router
                for replica in list(router.replicas):
                    healthy.add_metric(
                        [str(replica.partition), replica.node_id, model.name], 1.0 if router.usable(replica) else 0.0
                    )
        yield from (running, waiting, capacity, healthy)
