"""What the engines report as it happens, for a shell to count (Prometheus, a log, nothing).

The core stays free of any metrics library: the coordinator's GenerationEngine
and a node's NodeEngine call these hooks, whose defaults do nothing, and a
service shell subclasses them (shells/coordinator_metrics.py, shells/node_metrics.py).
State that is read rather than told (queue depth, KV occupancy, replica health)
is not here: a shell reads it from the engines when it is scraped.

Every hook runs on the hot path (the coordinator's event loop, a node's torch
thread): an implementation must only bump counters and observe histograms.
"""

from __future__ import annotations


class GenerationObserver:
    """The coordinator's events. Times are seconds."""

    def admitted(self, prompt_tokens: int) -> None:
        """A request joined a lane's queue."""

    def rejected(self, reason: str) -> None:
        """A request refused or failed for capacity: "overloaded" (429), "tenant_share" (429: its
        key holds its share of the queue) or "unavailable" (503)."""

    def iteration(self, sequences: int, lanes_in_flight: int, seconds: float) -> None:
        """One lane's pass through the whole chain: its batch size, the lanes inside an
        iteration when it started (itself included), how long it took."""

    def step(self, partition: int, node_id: str, seconds: float) -> None:
        """One Step call answered, timed by the coordinator (network included)."""

    def replay(self, reason: str) -> None:
        """A sequence restarted from position 0: "cache_miss" (a node refused it), "moved" (to another
        replica) or "step_failed" (a node's internal error on its step, retried once)."""

    def rebuilt(self, partition: int, tokens: int) -> None:
        """A replica's cache of one sequence was rebuilt alone: `tokens` positions
        recomputed on that partition, none on the others."""

    def prefix_lookup(self, prompt_tokens: int, reused_tokens: int) -> None:
        """A prefill from position 0 starts after `reused_tokens` of its prompt that
        the chain's nodes kept from earlier requests (0: none)."""

    def migrated(self, partition: int, seconds: float, transferred: bool) -> None:
        """A sequence moved off a draining replica: its K/V transferred (`transferred`),
        or, the source unable to export, left to be rebuilt on the target."""

    def failover(self, partition: int, node_id: str) -> None:
        """A call on this replica failed; its sequences move elsewhere."""

    def circuit_opened(self, partition: int, node_id: str) -> None:
        """This replica's circuit went from closed to open."""

    def first_token(self, seconds: float) -> None:
        """Admission to a request's first token."""

    def next_token(self, seconds: float) -> None:
        """The gap between two consecutive tokens of a request."""

    def finished(self, reason: str, generated_tokens: int, seconds: float) -> None:
        """A request ended: "eos", "length", "cancelled" or "error", after `seconds` since admission."""


class NodeStepObserver:
    """A node's events, on its torch thread."""

    def step(self, prefill_rows: int, decode_rows: int, sequences: int, seconds: float) -> None:
        """One step computed. A sequence's rows are prefill when it starts at position 0
        or carries more than one token (a prompt chunk, a replay), else decode."""


NO_GENERATION_OBSERVER = GenerationObserver()
NO_NODE_OBSERVER = NodeStepObserver()
