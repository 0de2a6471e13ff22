"""The REST contract of node and model management (api/management_routes.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..core.cluster_config import MODEL_NAME_PATTERN
from .schemas import ModelInfo, NodeOut

NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
# host:port, the host a name, an IPv4 address or a bracketed IPv6 one
ADDRESS_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]{1,253}):[0-9]{1,5}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class RegisterNodeRequest(_Strict):
    id: str = Field(pattern=NODE_ID_PATTERN, description="The node's id in this cluster (unique).")
    address: str = Field(pattern=ADDRESS_PATTERN, description="host:port where the coordinator reaches it.")
    model: str | None = Field(None, pattern=MODEL_NAME_PATTERN, description="The model it serves; absent: the default.")


class DrainRequest(_Strict):
    timeout_s: float = Field(120.0, gt=0, le=3600, description="How long to wait for its sequences to move.")


class DrainResponse(BaseModel):
    node_id: str
    moved: int = Field(description="Sequences whose K/V was transferred to another replica.")
    moved_direct: int = Field(
        description="Of `moved`, those the other replica read from the node itself (node to node); "
        "the rest went through the coordinator (the nodes could not reach each other)."
    )
    recomputed: int = Field(description="Sequences rebuilt on another replica (the node could not export them).")
    pause_ms: list[float] = Field(description="Per moved sequence: how long it did not step while it moved.")
    max_pause_ms: float
    removed: bool = Field(description="false: the timeout passed with sequences left; the node stays cordoned.")


class RolloutNode(_Strict):
    id: str = Field(pattern=NODE_ID_PATTERN)
    address: str = Field(pattern=ADDRESS_PATTERN)
    partition: int = Field(ge=0, le=1024)


class RolloutRequest(_Strict):
    num_partitions: int = Field(ge=1, le=1024)
    split: str = Field("even", max_length=4096, description='"even", "balanced" or explicit "0-4,4-8,8-12".')
    nodes: list[RolloutNode] = Field(min_length=1, max_length=4096)
    timeout_s: float = Field(300.0, gt=0, le=3600, description="How long the new split may take to become ready.")


class RolloutResponse(BaseModel):
    model: str
    split_generation: int
    num_partitions: int
    retiring: list[str] = Field(description="The old split's nodes: they leave once their running requests finish.")


class NodesResponse(BaseModel):
    nodes: list[NodeOut]


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
