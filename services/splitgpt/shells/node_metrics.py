"""A partition node's metrics (docs/metrics.md, Node): `node` and `partition` on every series.

Steps are counted as they happen, through the engine's observer (one call per
step on the torch thread: a few histogram observations). The KV cache, the
weights and draining are state, read from the engine when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..core.engine_observer import NodeStepObserver
from ..core.node_engine import resident_bytes
from .metrics_http import process_registry

if TYPE_CHECKING:
    from ..core.node_engine import NodeEngine
    from .node_service import NodeSettings

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
SEQUENCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LABELS = ["node", "partition"]


class NodeMetrics(NodeStepObserver):
    def __init__(self, settings: NodeSettings, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else process_registry("node")
        self.settings = settings
        self.label_values = [settings.node_id, str(settings.partition)]
        self.engine: NodeEngine | None = None  # set once the weights are loaded
        self.load_seconds = 0.0
        self.is_draining: Callable[[], bool] = lambda: False
        r, node = self.registry, self.label_values
        step = Histogram("splitgpt_node_step_duration_seconds", "One Step call's compute on this node", [*LABELS, "phase"],
                         buckets=STEP_BUCKETS, registry=r)  # fmt: skip
        tokens = Counter("splitgpt_node_tokens_processed_total", "Token rows run through this partition's blocks",
                         [*LABELS, "phase"], registry=r)  # fmt: skip
        # Children bound once: a step then costs no label lookups.
        self._prefill_seconds, self._decode_seconds = step.labels(*node, "prefill"), step.labels(*node, "decode")
        self._prefill_tokens, self._decode_tokens = tokens.labels(*node, "prefill"), tokens.labels(*node, "decode")
        self._rows = Histogram("splitgpt_node_step_rows", "Token rows per step", LABELS, buckets=ROW_BUCKETS,
                               registry=r).labels(*node)  # fmt: skip
        self._sequences = Histogram("splitgpt_node_step_sequences", "Sequences per step", LABELS, buckets=SEQUENCE_BUCKETS,
                                    registry=r).labels(*node)  # fmt: skip
        r.register(_NodeState(self))

    def attach(self, engine: NodeEngine, load_seconds: float) -> None:
        """The node is loaded: report its steps and its state from now on."""
        self.load_seconds = load_seconds
        self.engine = engine
        engine.observer = self

    # NodeStepObserver: on the torch thread, once per step.
    def step(self, prefill_rows: int, decode_rows: int, sequences: int, seconds: float) -> None:
        (self._prefill_seconds if prefill_rows else self._decode_seconds).observe(seconds)
        self._rows.observe(prefill_rows + decode_rows)
        self._sequences.observe(sequences)
        if prefill_rows:
            self._prefill_tokens.inc(prefill_rows)
        if decode_rows:
            self._decode_tokens.inc(decode_rows)


class _NodeState(Collector):
    """Read at scrape time, on the metrics thread: only snapshots (`KVCacheStore.stats`)."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m, values = self.m, self.m.label_values
        engine = m.engine
        stats = engine.cache.stats() if engine is not None else None
        budget = stats.max_tokens if stats else m.settings.kv_max_tokens

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, documentation, labels=LABELS)
            family.add_metric(values, value)
            return family

        def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, documentation, labels=LABELS)
            family.add_metric(values, value)
            return family

        if engine is not None:
            p = engine.partition
            info = GaugeMetricFamily(
                "splitgpt_node_info", "What this replica serves",
                labels=[*LABELS, "start_block", "end_block", "num_partitions", "model"],
            )  # fmt: skip
            info.add_metric([*values, str(p.start), str(p.end), str(m.settings.num_partitions), m.settings.model_id], 1)
            yield info
        tokens = stats.cached_tokens if stats else 0
        yield gauge("splitgpt_node_kv_sessions", "Sessions holding K/V", stats.sessions if stats else 0)
        yield gauge("splitgpt_node_kv_cached_tokens", "Tokens held in the K/V cache", tokens)
        yield gauge("splitgpt_node_kv_budget_tokens", "The K/V cache's token budget", budget)
        yield gauge("splitgpt_node_kv_usage_ratio", "Tokens held / the budget", tokens / budget if budget else 0.0)
        yield gauge("splitgpt_node_kv_cache_bytes", "Bytes of K/V buffers allocated", stats.allocated_bytes if stats else 0)
        yield counter(
            "splitgpt_node_kv_evictions_total", "Sessions evicted for the budget (LRU)", stats.evictions if stats else 0
        )
        yield counter("splitgpt_node_kv_expirations_total", "Sessions expired by the TTL", stats.expirations if stats else 0)
        yield counter(
            "splitgpt_node_cache_misses_total",
            "Steps refused for an unknown session or position (the coordinator replays)",
            stats.misses if stats else 0,
        )
        yield gauge("splitgpt_node_prefix_blocks", "Prompt blocks (16 tokens) kept for prefix reuse, in the K/V budget",
                    stats.prefix_blocks if stats else 0)  # fmt: skip
        yield gauge("splitgpt_node_prefix_bytes", "Bytes of the kept prompt blocks", stats.prefix_bytes if stats else 0)
        yield counter("splitgpt_node_prefix_hits_total", "Sessions started from kept prompt blocks",
                      stats.prefix_hits if stats else 0)  # fmt: skip
        yield counter("splitgpt_node_prefix_reused_tokens_total", "Positions those sessions took from kept blocks (not computed)",
                      stats.prefix_reused_tokens if stats else 0)  # fmt: skip
        yield gauge("splitgpt_node_weight_bytes", "Bytes of weights this partition holds (its decode copy included)",
                    engine.partition.weight_bytes if engine is not None else 0)  # fmt: skip
        # process_resident_memory_bytes says the same, but without `node` and `partition`:
        # this one sits beside weight_bytes on the same labels, and is what Info reports.
        yield gauge("splitgpt_node_resident_memory_bytes", "This node process's resident memory (RSS)", resident_bytes())
        yield gauge("splitgpt_node_load_duration_seconds", "Time to load the weights at start", m.load_seconds)
        yield gauge("splitgpt_node_draining", "1 while draining after SIGTERM", 1.0 if m.is_draining() else 0.0)
