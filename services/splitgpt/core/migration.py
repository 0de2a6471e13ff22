"""Live migration: a running sequence's K/V moves from one replica to another.

A replica being drained keeps serving the sequences it holds until each is
moved: between two of its steps, the sequence's session is exported from the
replica (every local layer's K/V and the kept output rows) and imported into
another replica of the same partition, and its chain switches there. Nothing
is recomputed: the next step runs on the new replica at the position the old
one held, with the very same K/V, so the tokens are those it would have
produced. Only where the source cannot export (it died, or lost the session)
is the sequence's cache rebuilt on the target instead (core.engine, _rebuild).

The target reads the session from the source itself where it can (node to
node: shells.session_pull); where it cannot, the coordinator exports it from
the source and imports it into the target.

This module keeps the accounting of a drain; the engine does the moving.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DrainProgress:
    """What a drain of one replica did so far."""

    moved: int = 0  # sequences whose K/V was transferred
    recomputed: int = 0  # sequences rebuilt on the target (the source could not export)
    pause_ms: list[float] = field(default_factory=list)  # per moved sequence: the time it did not step
    moved_direct: int = 0  # of `moved`, those the target read from the source itself (node to node)
    # Targets (node ids) that could not read from the source: the rest of this drain
    # moves their sequences through the coordinator without trying again (a network
    # that drops node-to-node traffic would otherwise cost each move a connect timeout).
    unpullable: set[str] = field(default_factory=set)

    def record_moved(self, seconds: float, direct: bool) -> None:
        self.moved += 1
        self.moved_direct += direct
        self.pause_ms.append(seconds * 1000)
