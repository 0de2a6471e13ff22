"""Is the whole chain able to serve? The tokenizer, the coordinator, and a SERVING node per partition."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ApiError
from .schemas import ErrorBody, ReadyResponse

if TYPE_CHECKING:
    from .backends import Backends


async def readiness(backends: Backends) -> ReadyResponse:
    checks = await backends.readiness()
    partitions: dict[str, bool] = {}
    if checks["coordinator"] != "UNREACHABLE":
        try:
            for node in (await backends.cluster()).nodes:
                key = str(node.partition)
                partitions[key] = partitions.get(key, False) or node.status == "SERVING"
        except ApiError:
            pass  # the coordinator's own status already says why
    missing = [name for name in ("tokenizer", "coordinator") if checks[name] != "SERVING"]
    missing += [f"partition {p}" for p, serving in sorted(partitions.items()) if not serving]
    if not partitions and checks["coordinator"] == "SERVING":
        missing.append("the partition nodes (the coordinator lists none)")
    error = None
    if missing:
        error = ErrorBody(type="unavailable", message=f"not ready: no SERVING {', '.join(missing)}")
    return ReadyResponse(
        ready=not missing, tokenizer=checks["tokenizer"], coordinator=checks["coordinator"], partitions=partitions, error=error
    )
