"""Node and model management: list, register, cordon, drain, remove nodes; list models; roll out a split.

Everything that changes the cluster needs an admin key where keys are configured
(without keys the gateway answers local names only: api/auth.py, host_allow.py).
A route is a schema in, one coordinator call (api/cluster_admin.py), a schema out.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path

from ..core.cluster_config import MODEL_NAME_PATTERN
from . import ownership
from .deps import BackendsDep, JsonBody
from .error_handlers import error_responses
from .errors import ApiError
from .management_schemas import (
    NODE_ID_PATTERN,
    DrainRequest,
    DrainResponse,
    ModelsResponse,
    NodesResponse,
    RegisterNodeRequest,
    RolloutRequest,
    RolloutResponse,
)
from .schemas import NodeOut

COORDINATOR_ERRORS = error_responses(502, 503, 504)


def require_admin() -> None:
    """403 unless the caller's key is an admin key (no keys configured: everyone is)."""
    caller = ownership.current()
    if caller is not None and not caller.admin:
        raise ApiError(403, "forbidden", "managing nodes and models needs an admin key (`admin:` in the keys file)")


Admin = Depends(require_admin)
NodeId = Annotated[str, Path(pattern=NODE_ID_PATTERN, description="The node's id (GET /api/nodes lists them).")]
ModelName = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, description="The model's name (GET /api/models).")]
NODE_ERRORS = {**error_responses(403, 404, 409, 422), **COORDINATOR_ERRORS}


def management_router() -> APIRouter:
    router = APIRouter(tags=["management"])

    @router.get("/api/models", response_model=ModelsResponse, responses=COORDINATOR_ERRORS)
    async def models(backends: BackendsDep) -> ModelsResponse:
        """Every served model, the default first: its checkpoint, context, split and readiness."""
        return ModelsResponse(models=await backends.models())

    @router.get("/api/nodes", response_model=NodesResponse, dependencies=[Admin], responses=NODE_ERRORS)
    async def nodes(backends: BackendsDep) -> NodesResponse:
        """Every node with its lifecycle (online, busy, offline, error, cordoned, draining), model,
        partition, CPU, resident memory and KV use."""
        return NodesResponse(nodes=(await backends.cluster()).nodes)

    @router.post(
        "/api/nodes",
        response_model=NodeOut,
        status_code=201,
        dependencies=[Admin, JsonBody],
        responses={**NODE_ERRORS, **error_responses(400, 415)},
    )
    async def register(body: RegisterNodeRequest, backends: BackendsDep) -> NodeOut:
        """Add a running node to a model at run time. The coordinator asks the node what it serves
        and refuses it (400, saying what differs) unless it is that model with the block range
        the model's split gives its partition."""
        return await backends.admin.register(body)

    @router.post("/api/nodes/{node_id}/cordon", response_model=NodeOut, dependencies=[Admin], responses=NODE_ERRORS)
    async def cordon(node_id: NodeId, backends: BackendsDep) -> NodeOut:
        """No new requests go to the node; those running on it stay."""
        return await backends.admin.cordon(node_id, cordoned=True)

    @router.post("/api/nodes/{node_id}/uncordon", response_model=NodeOut, dependencies=[Admin], responses=NODE_ERRORS)
    async def uncordon(node_id: NodeId, backends: BackendsDep) -> NodeOut:
        """The node takes new requests again."""
        return await backends.admin.cordon(node_id, cordoned=False)

    @router.post("/api/nodes/{node_id}/drain", response_model=DrainResponse, dependencies=[Admin], responses=NODE_ERRORS)
    async def drain(node_id: NodeId, backends: BackendsDep, body: Annotated[DrainRequest | None, Body()] = None) -> DrainResponse:
        """Cordon the node, move each running request's K/V to another replica of its partition
        (no recomputation, no failed request), then remove it. 409 when no other replica of its
        partition can take them."""
        return await backends.admin.drain(node_id, (body or DrainRequest()).timeout_s)

    @router.delete("/api/nodes/{node_id}", response_model=NodeOut, dependencies=[Admin], responses=NODE_ERRORS)
    async def remove(node_id: NodeId, backends: BackendsDep) -> NodeOut:
        """Forget the node now: requests on it move at their next step and rebuild their caches elsewhere."""
        return await backends.admin.remove(node_id)

    @router.post(
        "/api/models/{model:path}/rollout",
        response_model=RolloutResponse,
        dependencies=[Admin, JsonBody],
        responses={**NODE_ERRORS, **error_responses(400, 415)},
    )
    async def rollout(model: ModelName, body: RolloutRequest, backends: BackendsDep) -> RolloutResponse:
        """Serve the model with a new split (say 3 partitions to 4) on the nodes given, beside the old
        one. Answers once every partition of the new split has a SERVING node: from then on new
        requests go to it, running ones finish on the old split, whose nodes then leave."""
        return await backends.admin.rollout(model, body)

    return router
