"""Live migration: a running sequence's K/V moves from one replica to another.

A replica being drained keeps serving the sequences it holds until each is
moved: between two of its steps, the sequence's session is exported from the
replica (every local layer's K/V and the kept output rows) and imported into
another replica of the same partition, and its chain switches there. Nothing
is recomputed: the next step runs on the new replica at the position the old
one held, with the very same K/V, so the tokens are those it would have
produced. Only where the source cannot export (it died, or lost the session)
is the sequence's cache rebuilt on the target instead (core.engine, _rebuild).

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

    def record_moved(self, seconds: float) -> None:
        self.moved += 1
        self.pause_ms.append(seconds * 1000)
