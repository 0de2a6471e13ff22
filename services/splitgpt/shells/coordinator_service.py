"""The coordinator: health-checks the nodes and drives generation through them.

Settings, the servicer (protobuf in, a core call, protobuf out: GenerationError
becomes a status in `error_mapping`) and start-up. Which nodes exist and which
are usable is `cluster_view`'s; generation is `core.engine`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ..core.cluster_config import ClusterConfig, ModelConfig, NodeEntry
from ..core.engine import FinishEvent, GenerationEngine, GenerationError, GenerationRequest, PartitionTiming
from ..core.engine_observer import NO_GENERATION_OBSERVER, GenerationObserver
from ..core.prefix_cache import PrefixIndex
from ..core.routing import Replica
from ..logs import configure
from ..rpc import coordinator_pb2, coordinator_pb2_grpc
from .cli_settings import settings_from_cli
from .cluster_view import Cluster
from .convert import sampling_from_proto
from .coordinator_metrics import CoordinatorMetrics
from .grpc_runtime import GrpcServer
from .internal_auth import InternalSecurity, InternalSecurityError, InternalSecuritySettings
from .metrics_http import MetricsPortError, serve_metrics
from .relay_client import RelayClient
from .served_models import ServedModel, ServedModels, Split

log = logging.getLogger("splitgpt.coordinator")
SERVICE_NAME = "splitgpt.v1.Coordinator"


class CoordinatorSettings(InternalSecuritySettings):
    model_config = SettingsConfigDict(env_prefix="SPLITGPT_COORDINATOR_", populate_by_name=True)

    model_id: str = Field("gpt2", validation_alias="MODEL_ID")
    cluster_config: Path = Path("cluster.json")
    host: str = "127.0.0.1"
    port: int = 50050
    health_interval_s: float = 1.0
    probe_timeout_s: float = 1.0
    # How often each SERVING node's Info is read again for its resident memory
    # (its KV cache grows and shrinks); one small call per node, never per step.
    info_interval_s: float = 5.0
    step_timeout_s: float = 30.0
    routing: str = "least_loaded"  # round_robin | least_loaded | latency
    unavailable_grace_s: float = 10.0
    max_batch_size: int = 64
    max_queue: int = 256
    # One API key holds at most this fraction of max_batch_size + max_queue (1: no cap).
    max_tenant_share: float = Field(0.5, gt=0, le=1)
    dns_refresh_s: float = 10.0
    # Micro-batches in flight at once (pipeline parallelism); 0: one per partition.
    micro_batches: int = 0
    prefill_chunk_tokens: int = 256
    # Relay: the nodes pass each step's rows along the chain themselves and the last
    # answers (shells.relay); off: the coordinator calls every partition in turn.
    relay: bool = True
    # Live migration (core.migration): the replica taking a drained sequence reads its
    # K/V from the draining node itself; off: the coordinator carries it (for networks
    # where nodes may not call each other and drop what they try, which would cost a
    # drain a connect timeout before it falls back).
    migration_pull: bool = True
    # Prefix reuse (core.prefix_cache): nodes keep prompt blocks, later prompts that
    # start with them skip their prefill (7.7x faster first token on a shared
    # 400-token prefix, gpt2-xl). Off by default: at 0% hits it cost 1-5% time to
    # first token here (the kept blocks hold memory, so each new session's buffers
    # are fresh pages the kernel must fault in, where they would be recycled),
    # over the 2% a default may cost.
    prefix_cache: bool = False
    # Prometheus /metrics over plain HTTP on its own port (docs/metrics.md); 0: off.
    metrics_port: int = 0
    metrics_host: str | None = None  # None: `host`
    log_level: str = "INFO"


def _timings(items: list[PartitionTiming]) -> list[coordinator_pb2.PartitionTiming]:
    return [coordinator_pb2.PartitionTiming(partition=t.partition, node_id=t.node_id, ms=t.ms) for t in items]


def _entries(nodes) -> list[NodeEntry]:
    return [NodeEntry(id=n.id, address=n.address, partition=n.partition) for n in nodes]


def engine_factory(settings: CoordinatorSettings, observer: Callable[[str], GenerationObserver]):
    """What builds a split's engine once its model is known (from its last partition's Info);
    `observer(name)`: the events' observer of the model served under that name."""

    def make(cluster: Cluster) -> GenerationEngine:
        m = cluster.model
        return GenerationEngine(
            cluster.router,
            cluster.client_for,
            eos_token_id=m.eos_token_id,
            n_ctx=m.n_ctx,
            vocab_size=m.vocab_size,
            max_batch_size=settings.max_batch_size,
            micro_batches=settings.micro_batches or None,
            prefill_chunk_tokens=settings.prefill_chunk_tokens,
            max_queue=settings.max_queue,
            max_tenant_share=settings.max_tenant_share,
            unavailable_grace_s=settings.unavailable_grace_s,
            observer=observer(cluster.config.served_name(settings.model_id)),
            relay=RelayClient() if settings.relay else None,
            pull_sessions=settings.migration_pull,
            prefix_index=PrefixIndex() if settings.prefix_cache else None,
        )

    return make


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(
        self,
        models: ServedModels,
        settings: CoordinatorSettings,
        observer: Callable[[str], GenerationObserver] = lambda name: NO_GENERATION_OBSERVER,
    ) -> None:
        self.models = models
        self.settings = settings
        self.observer = observer  # a model's observer by its served name

    async def Generate(self, request, context):
        model = self.models.get(request.model)
        engine = self.models.engine(model.current())
        if engine is None:
            self.observer(model.name).rejected("unavailable")
            raise GenerationError(
                "unavailable", f"model {model.name} is still starting: none of its last-partition nodes is SERVING yet"
            )
        req = GenerationRequest(
            request_id=request.request_id,
            prompt_ids=list(request.prompt_ids),
            max_tokens=request.max_tokens,
            min_tokens=request.min_tokens,
            sampling=dataclasses.replace(sampling_from_proto(request.sampling), top_logprobs=request.top_logprobs),
            ignore_eos=request.ignore_eos,
            tenant=request.tenant,
        )
        if any(e.holds(req.request_id) for e in self.models.engines() if e is not engine):
            raise GenerationError("invalid", f"request id {req.request_id!r} is already running")
        # aclosing: a client that goes away closes the engine's stream, which
        # cancels the sequence and frees its caches on every node.
        async with contextlib.aclosing(engine.generate(req)) as events:
            async for event in events:
                if isinstance(event, FinishEvent):
                    yield coordinator_pb2.GenerateEvent(
                        finish=coordinator_pb2.FinishEvent(
                            finish_reason=event.finish_reason,
                            prompt_tokens=event.prompt_tokens,
                            completion_tokens=event.completion_tokens,
                            inference_ms=event.inference_ms,
                            partitions=_timings(event.partitions),
                        )
                    )
                else:
                    yield coordinator_pb2.GenerateEvent(
                        token=coordinator_pb2.TokenEvent(
                            token_id=event.token_id,
                            logprob=event.logprob,
                            index=event.index,
                            partitions=_timings(event.partitions),
                            top_token_ids=[t for t, _ in event.top_logprobs],
                            top_logprobs=[lp for _, lp in event.top_logprobs],
                        )
                    )

    def _model_info(self, model: ServedModel) -> coordinator_pb2.ModelInfo | None:
        split = model.current()
        m = split.cluster.model
        if m is None:
            return None
        return coordinator_pb2.ModelInfo(
            model_id=m.model_id,
            n_ctx=m.n_ctx,
            vocab_size=m.vocab_size,
            eos_token_id=m.eos_token_id,
            n_layer=m.n_layer,
            num_partitions=split.cluster.config.num_partitions,
            name=model.name,
            ready=model.ready(),
            hidden_size=m.hidden_size,
            split_generation=split.generation,
        )

    async def GetModelInfo(self, request, context):
        model = self.models.get(request.model)
        info = self._model_info(model)
        if info is None:
            raise GenerationError("unavailable", f"model {model.name} is not known yet: no last-partition node is SERVING")
        return info

    async def ListModels(self, request, context):
        listed = []
        for model in self.models.models.values():
            info = self._model_info(model)
            if info is None:  # not known yet: listed by name, not ready
                split = model.current()
                info = coordinator_pb2.ModelInfo(
                    name=model.name, model_id=split.cluster.config.model or self.settings.model_id,
                    num_partitions=split.cluster.config.num_partitions, split_generation=split.generation,
                )  # fmt: skip
            listed.append(info)
        return coordinator_pb2.ModelList(models=listed)

    def _node_state(self, model: ServedModel, split: Split, r: Replica) -> coordinator_pb2.NodeState:
        start, end = r.layers or (0, 0)
        memory = split.cluster.memory(r.node_id)
        return coordinator_pb2.NodeState(
            id=r.node_id, address=r.address, partition=r.partition, start_block=start, end_block=end,
            status=r.status, in_flight=r.in_flight, latency_ewma_ms=r.latency_ewma_ms,
            consecutive_failures=r.consecutive_failures, circuit=r.circuit,
            weight_bytes=memory.weight_bytes, resident_bytes=memory.resident_bytes,
            model=model.name, num_partitions=split.cluster.config.num_partitions, split_generation=split.generation,
            cordoned=r.cordoned, draining=r.draining, lifecycle=split.cluster.lifecycle(r),
            cpu_percent=memory.cpu_percent, kv_tokens=memory.kv_tokens, kv_max_tokens=memory.kv_max_tokens,
            sequences=split.engine.sequences_on(r) if split.engine else 0,
        )  # fmt: skip

    async def GetCluster(self, request, context):
        nodes = [self._node_state(m, s, r) for m, s in self.models.splits() for r in s.cluster.router.replicas]
        default = self.models.default.current().cluster
        model_id = default.model.model_id if default.model else (default.config.model or self.settings.model_id)
        listed = await self.ListModels(request, context)
        return coordinator_pb2.ClusterState(model_id=model_id, nodes=nodes, models=listed.models)

    async def ListTasks(self, request, context):
        tasks = []
        for model, split in self.models.splits():
            if split.engine is not None:
                tasks += [coordinator_pb2.Task(**t, model=model.name) for t in split.engine.tasks()]
        return coordinator_pb2.TaskList(tasks=tasks)

    async def CancelTask(self, request, context):
        cancelled = any(e.cancel(request.request_id) for e in self.models.engines())
        return coordinator_pb2.CancelTaskResponse(cancelled=cancelled)

    async def RegisterNode(self, request, context):
        return self._node_state(*await self.models.register(request.model, request.node_id, request.address))

    async def CordonNode(self, request, context):
        return self._node_state(*self.models.cordon(request.node_id))

    async def UncordonNode(self, request, context):
        return self._node_state(*self.models.cordon(request.node_id, cordoned=False))

    async def RemoveNode(self, request, context):
        return self._node_state(*self.models.remove(request.node_id))

    async def DrainNode(self, request, context):
        outcome = await self.models.drain(request.node_id, request.timeout_s)
        return coordinator_pb2.DrainReport(
            node_id=outcome.node_id, moved=outcome.progress.moved, recomputed=outcome.progress.recomputed,
            pause_ms=outcome.progress.pause_ms, removed=outcome.removed, moved_direct=outcome.progress.moved_direct,
        )  # fmt: skip

    async def Rollout(self, request, context):
        try:
            config = ModelConfig(
                num_partitions=request.num_partitions, split=request.split or "even", nodes=_entries(request.nodes)
            )
        except ValueError as exc:
            raise GenerationError("invalid", f"rollout: {exc}") from None
        split, retiring = await self.models.rollout(request.model, config, request.timeout_s)
        return coordinator_pb2.RolloutReport(
            model=self.models.get(request.model).name, split_generation=split.generation,
            num_partitions=config.num_partitions, retiring=retiring,
        )  # fmt: skip


async def start(settings: CoordinatorSettings) -> tuple[GrpcServer, asyncio.Task]:
    config = ClusterConfig.load(settings.cluster_config)
    security = InternalSecurity.from_settings(settings)  # serves with it, and calls the nodes with it
    server = GrpcServer(SERVICE_NAME, settings.host, settings.port, security)
    metrics: list[CoordinatorMetrics] = []
    models = ServedModels(config, settings, security, engine_factory(settings, lambda name: metrics[0].for_model(name)))
    servicer = CoordinatorServicer(models, settings)
    metrics.append(CoordinatorMetrics(models, settings.max_batch_size + settings.max_queue))
    servicer.observer = metrics[0].for_model
    metrics_server = serve_metrics(
        metrics[0].registry, settings.metrics_host or settings.host, settings.metrics_port, "coordinator"
    )
    if metrics_server is not None:
        server.on_stop.append(metrics_server.close)
    server.add(coordinator_pb2_grpc.add_CoordinatorServicer_to_server, servicer)
    await server.start()
    for name, model in models.models.items():
        split = model.current().cluster.config
        log.info("model %s: %d nodes in %d partitions", name, len(split.nodes), split.num_partitions)
    log.info("coordinator on %s:%d, %d models", settings.host, server.port, len(models.models))

    async def follow_health() -> None:
        watcher = asyncio.create_task(models.watch())
        serving = False
        try:
            while True:
                await models.changed.wait()
                models.changed.clear()
                if models.ready() != serving:
                    serving = models.ready()
                    await server.set_serving(serving)
                    log.info("cluster %s", "ready: every model's partitions have a SERVING node" if serving else "NOT ready")
        finally:
            watcher.cancel()
            await models.close()

    return server, asyncio.create_task(follow_health(), name="health")


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_cli(
        CoordinatorSettings, argv, "splitgpt coordinator", "Drive generation across the partition nodes."
    )
    configure(settings.log_level)

    async def run() -> None:
        server, health = await start(settings)
        try:
            await server.run_until_signal()
        finally:
            health.cancel()

    try:
        asyncio.run(run())
    except (InternalSecurityError, MetricsPortError) as exc:
        log.error("coordinator cannot start: %s", exc)
        raise SystemExit(2) from None
