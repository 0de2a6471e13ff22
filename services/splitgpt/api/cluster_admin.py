"""The coordinator's node and model management over gRPC, for the gateway's admin routes.

The edge, as api/backends.py is: protobuf stops here, failures leave as ApiError.
"""

from __future__ import annotations

from ..rpc import coordinator_pb2, coordinator_pb2_grpc
from . import wire
from .grpc_errors import rpc_errors
from .management_schemas import DrainResponse, RegisterNodeRequest, RolloutRequest, RolloutResponse
from .schemas import NodeOut

# Management calls wait on the cluster (a drain moves sequences, a rollout waits for
# nodes to load): their deadline is the operation's own timeout plus this.
MANAGEMENT_SLACK_S = 30.0


class ClusterAdmin:
    def __init__(self, coordinator: coordinator_pb2_grpc.CoordinatorStub, timeout_s: float) -> None:
        self.coordinator = coordinator
        self.timeout_s = timeout_s

    async def register(self, body: RegisterNodeRequest) -> NodeOut:
        request = coordinator_pb2.RegisterNodeRequest(model=body.model or "", node_id=body.id, address=body.address)
        with rpc_errors("coordinator"):
            state = await self.coordinator.RegisterNode(request, timeout=self.timeout_s + MANAGEMENT_SLACK_S)
        return wire.node(state)

    async def cordon(self, node_id: str, cordoned: bool) -> NodeOut:
        method = self.coordinator.CordonNode if cordoned else self.coordinator.UncordonNode
        with rpc_errors("coordinator"):
            state = await method(coordinator_pb2.NodeRequest(node_id=node_id), timeout=self.timeout_s)
        return wire.node(state)

    async def remove(self, node_id: str) -> NodeOut:
        with rpc_errors("coordinator"):
            state = await self.coordinator.RemoveNode(coordinator_pb2.NodeRequest(node_id=node_id), timeout=self.timeout_s)
        return wire.node(state)

    async def drain(self, node_id: str, timeout_s: float) -> DrainResponse:
        request = coordinator_pb2.DrainNodeRequest(node_id=node_id, timeout_s=timeout_s)
        with rpc_errors("coordinator"):
            report = await self.coordinator.DrainNode(request, timeout=timeout_s + MANAGEMENT_SLACK_S)
        pauses = [round(ms, 3) for ms in report.pause_ms]
        return DrainResponse(
            node_id=report.node_id, moved=report.moved, recomputed=report.recomputed, pause_ms=pauses,
            max_pause_ms=max(pauses, default=0.0), removed=report.removed, moved_direct=report.moved_direct,
        )  # fmt: skip

    async def rollout(self, model: str, body: RolloutRequest) -> RolloutResponse:
        request = coordinator_pb2.RolloutRequest(
            model=model, num_partitions=body.num_partitions, split=body.split, timeout_s=body.timeout_s,
            nodes=[coordinator_pb2.RolloutNode(id=n.id, address=n.address, partition=n.partition) for n in body.nodes],
        )  # fmt: skip
        with rpc_errors("coordinator"):
            report = await self.coordinator.Rollout(request, timeout=body.timeout_s + MANAGEMENT_SLACK_S)
        return RolloutResponse(
            model=report.model, split_generation=report.split_generation, num_partitions=report.num_partitions,
            retiring=list(report.retiring),
        )  # fmt: skip
