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
            cluster = await backends.cluster()
            current = {m.name: m.split_generation for m in cluster.models}
            default = cluster.models[0].name if cluster.models else ""
            for node in cluster.nodes:
                if node.model in current and node.split_generation != current[node.model]:
                    continue  # a split being rolled out, or retiring: the current one is what serves
                # The default model's partitions by number, as with one model; the others' as `name:number`.
                key = str(node.partition) if node.model in ("", default) else f"{node.model}:{node.partition}"
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
