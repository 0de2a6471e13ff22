"""Protobuf <-> what the gateway speaks: core generation types and the REST schemas.

The only module of the gateway's service layer that knows the coordinator's
messages; api/backends.py calls these at its edge.
"""

from __future__ import annotations

from ..core.generation_types import FinishEvent, GenerationRequest, PartitionTiming, TokenEvent
from ..rpc import common_pb2, coordinator_pb2
from .schemas import ClusterResponse, ModelInfo, NodeOut, TaskOut, TasksResponse


def generate_request(request: GenerationRequest) -> coordinator_pb2.GenerateRequest:
    s = request.sampling
    return coordinator_pb2.GenerateRequest(
        request_id=request.request_id,
        prompt_ids=request.prompt_ids,
        max_tokens=request.max_tokens,
        min_tokens=request.min_tokens,
        sampling=common_pb2.SamplingParams(
            temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed, suppress_token_ids=list(s.suppress)
        ),
        ignore_eos=request.ignore_eos,
        top_logprobs=s.top_logprobs,
        tenant=request.tenant,
        model=request.model,
    )


def _timings(items) -> list[PartitionTiming]:
    return [PartitionTiming(partition=t.partition, node_id=t.node_id, ms=t.ms) for t in items]


def generate_event(event: coordinator_pb2.GenerateEvent) -> TokenEvent | FinishEvent:
    if event.HasField("finish"):
        f = event.finish
        return FinishEvent(
            finish_reason=f.finish_reason,
            prompt_tokens=f.prompt_tokens,
            completion_tokens=f.completion_tokens,
            inference_ms=f.inference_ms,
            partitions=_timings(f.partitions),
        )
    t = event.token
    return TokenEvent(
        token_id=t.token_id,
        logprob=t.logprob,
        index=t.index,
        partitions=_timings(t.partitions),
        top_logprobs=tuple(zip(t.top_token_ids, t.top_logprobs, strict=True)),
    )


def model_info(m: coordinator_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=m.name or m.model_id, model_id=m.model_id, n_ctx=m.n_ctx, vocab_size=m.vocab_size,
        eos_token_id=m.eos_token_id, n_layer=m.n_layer, num_partitions=m.num_partitions, ready=m.ready,
        split_generation=m.split_generation,
    )  # fmt: skip


def cluster(state: coordinator_pb2.ClusterState) -> ClusterResponse:
    return ClusterResponse(
        model=state.model_id, models=[model_info(m) for m in state.models], nodes=[node(n) for n in state.nodes]
    )


def node(n: coordinator_pb2.NodeState) -> NodeOut:
    return NodeOut(
        id=n.id,
        address=n.address,
        partition=n.partition,
        layers=[n.start_block, n.end_block] if n.end_block else None,
        status=n.status,
        circuit=n.circuit,
        consecutive_failures=n.consecutive_failures,
        in_flight=n.in_flight,
        latency_ewma_ms=n.latency_ewma_ms if n.HasField("latency_ewma_ms") else None,
        weight_bytes=n.weight_bytes,
        resident_bytes=n.resident_bytes,
        model=n.model,
        num_partitions=n.num_partitions,
        split_generation=n.split_generation,
        lifecycle=n.lifecycle or None,
        cordoned=n.cordoned,
        draining=n.draining,
        cpu_percent=round(n.cpu_percent, 1),
        kv_tokens=n.kv_tokens,
        kv_max_tokens=n.kv_max_tokens,
        sequences=n.sequences,
    )


def tasks(listing: coordinator_pb2.TaskList) -> TasksResponse:
    return TasksResponse(
        tasks=[
            TaskOut(
                request_id=t.request_id,
                state=t.state,
                prompt_tokens=t.prompt_tokens,
                generated_tokens=t.generated_tokens,
                max_tokens=t.max_tokens,
                age_s=round(t.age_s, 3),
                chain=list(t.chain),
                replays=t.replays,
                model=t.model,
                migrations=t.migrations,
            )
            for t in listing.tasks
        ]
    )
