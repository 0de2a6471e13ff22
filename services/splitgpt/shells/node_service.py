"""The partition node: a grpc.aio shell over `core.node_engine.NodeEngine`.

Each method is protobuf in, a core call, protobuf out; the core's exceptions
(cache miss, malformed step, budget, still loading) become status codes in
`error_mapping`, once for every method.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Literal

import grpc
import torch
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ..core import tensors
from ..core.checkpoint import ModelSourceError, load_config, resolve_model_dir
from ..core.gpt2_partition import GPT2Partition
from ..core.linear_kernels import decode_copy_helps, resolve_kernels
from ..core.memory_plan import Geometry, check_budget, parse_bytes, wants_decode_copy
from ..core.node_contract import NodeNotReady, SequenceStep, StepBatch
from ..core.node_engine import NodeEngine, ThreadBudget, cpu_seconds, resident_bytes, return_freed_memory
from ..core.partitioning import PartitionError, resolve_split
from ..core.sampling import SamplingSpec
from ..logs import configure
from ..rpc import node_pb2, node_pb2_grpc
from .cli_settings import settings_from_cli
from .convert import fill_tensor, sampling_from_proto, tensor_from_proto, tensor_to_proto
from .error_mapping import code_number, status_and_details
from .grpc_runtime import SERVICE_RECEIVE_BYTES, GrpcServer
from .internal_auth import InternalSecurity, InternalSecurityError, InternalSecuritySettings
from .main_thread import MainThreadExecutor, SignalRelay
from .metrics_http import MetricsPortError, serve_metrics
from .node_client import SnapshotReader, session_chunks
from .node_metrics import NodeMetrics
from .relay import Listeners, PeerLinks, PeerUnreachable, StreamWriter
from .session_pull import read_session

log = logging.getLogger("splitgpt.node")
SERVICE_NAME = "splitgpt.v1.PartitionNode"
# A step of a partition with small blocks (one thread: linear_kernels.
# PARALLEL_MIN_WEIGHT_BYTES) and at most this many rows x parameters runs on
# the event loop itself: the hand-off to the torch thread (the main thread, in
# `main`) and back costs two thread wake-ups, more than such a step computes. A
# multi-threaded step stays on the torch thread: run on the loop's, a GPT-2-small decode step of
# one row made the stack's single stream 53 ms/token instead of 42 (measured
# here; the loop's other threads, gRPC's poller among them, then preempt the
# OpenMP team at its barriers). So does a large step (a prefill, a big batch),
# so that health probes and the next request never wait behind it.
INLINE_STEP_MAX_ROW_PARAMETERS = 150_000_000
NOT_SAMPLED = SamplingSpec()  # a step's sampling, on a partition that does not sample


class NodeSettings(InternalSecuritySettings):
    model_config = SettingsConfigDict(env_prefix="SPLITGPT_NODE_", populate_by_name=True)

    model_id: str = Field("gpt2", validation_alias="MODEL_ID")
    node_id: str = "node-0"
    partition: int = 0
    num_partitions: int = 3
    split: str = "even"  # "even", "balanced", or explicit "0-4,4-8,8-12"
    host: str = "127.0.0.1"
    port: int = 50100
    device: str = "cpu"
    dtype: str = "float32"
    # Matrix-product kernels: "auto" (oneDNN with prepacked weights where it
    # runs, else the reference addmm), "onednn", or "reference".
    kernels: str = "auto"
    # With oneDNN, hold the head reordered for it (1.4x faster; a tenth of a
    # decode step). The tied embedding then reads its rows from the
    # checkpoint's file mapping, which stays plain: the packed copy is this
    # node's own memory, the mapped rows are page cache (shared, reclaimable).
    pack_head: bool = True
    # With oneDNN in float32, also hold the block matrices plain for steps of 1-3
    # rows (a single stream's decode: 17-35% faster products, twice the block
    # weights; linear_kernels says why). "auto": where the copy fits the memory
    # budget, or without one where it is at most 1 GiB; "true"; "false".
    decode_copy: Literal["auto", "true", "false"] = "auto"
    # This node's memory (4G, 1.5G, bytes; Kubernetes: the pod's limit): it refuses
    # to load a share that needs more (core.memory_plan). None: no check.
    memory_budget: str | None = None
    kv_max_tokens: int = 65536
    kv_ttl_s: float = 600.0
    torch_threads: int = 0  # 0: leave torch's default
    # Nodes sharing one host's cores: divide torch_threads among the
    # micro-batches the coordinator has in flight (see core ThreadBudget).
    divide_threads: bool = False
    # After SIGTERM: NOT_SERVING but still answering for this long, so the
    # coordinator (probing every second or so) moves its sequences first.
    drain_s: float = 3.0
    # Prometheus /metrics over plain HTTP on its own port (docs/metrics.md); 0: off.
    metrics_port: int = 0
    metrics_host: str | None = None  # None: `host`
    log_level: str = "INFO"


def load_engine(settings: NodeSettings) -> NodeEngine:
    model_dir = resolve_model_dir(settings.model_id)
    config = load_config(model_dir)
    ranges = resolve_split(settings.split, config.n_layer, settings.num_partitions, config.vocab_size, config.n_embd)
    if not 0 <= settings.partition < len(ranges):
        raise PartitionError(f"partition {settings.partition} outside 0..{len(ranges) - 1}")
    start, end = ranges[settings.partition]
    dtype = tensors.dtype_from_name(settings.dtype)
    geometry = Geometry(config.n_layer, config.n_embd, config.n_positions, config.vocab_size, dtype.itemsize, settings.pack_head)
    budget = parse_bytes(settings.memory_budget) if settings.memory_budget else None
    last = end == config.n_layer
    if budget is not None:  # before any weight is read
        check_budget(geometry, end - start, last, budget, settings.node_id)
    kernels = resolve_kernels(settings.kernels, torch.device(settings.device), dtype)
    helps = decode_copy_helps(kernels, dtype)
    decode_copy = wants_decode_copy(settings.decode_copy, helps, geometry, end - start, last, budget)
    partition = GPT2Partition.from_checkpoint(
        model_dir,
        start,
        end,
        holds_head=last,
        device=settings.device,
        dtype=dtype,
        kernels=kernels,
        pack_head=settings.pack_head,
        decode_copy=decode_copy,
    )
    threads = ThreadBudget(settings.torch_threads or torch.get_num_threads(), settings.divide_threads)
    engine = NodeEngine(partition, settings.kv_max_tokens, settings.kv_ttl_s, threads)
    engine.warm_up()
    return_freed_memory()
    return engine


class PartitionNodeServicer(node_pb2_grpc.PartitionNodeServicer):
    def __init__(self, settings: NodeSettings, executor: Executor) -> None:
        self.settings = settings
        self._engine: NodeEngine | None = None  # set once the weights are loaded
        # One worker (the main thread in `main`): torch work is serialised per node
        # and, beyond the small steps above, never blocks the loop.
        self.executor = executor
        self._queued = 0  # calls handed to the executor and not finished
        self.listeners = Listeners()  # coordinators' streams here, for relayed steps' answers
        self.peers = PeerLinks(InternalSecurity.from_settings(settings), self.listeners)

    @property
    def engine(self) -> NodeEngine:
        if self._engine is None:  # bound before loading, so that health can say NOT_SERVING
            raise NodeNotReady(f"{self.settings.node_id} is still loading its weights")
        return self._engine

    def attach(self, engine: NodeEngine) -> None:
        self._engine = engine

    async def _run(self, fn, *args):
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self._queued -= 1

    async def Info(self, request, context):
        p = self.engine.partition
        return node_pb2.NodeInfo(
            node_id=self.settings.node_id,
            model_id=self.settings.model_id,
            partition=self.settings.partition,
            num_partitions=self.settings.num_partitions,
            start_block=p.start,
            end_block=p.end,
            n_layer=p.config.n_layer,
            holds_embedding=p.holds_head,
            holds_head=p.holds_head,
            device=str(p.device),
            dtype=self.settings.dtype,
            parameter_bytes=p.parameter_bytes,
            weight_bytes=p.weight_bytes,
            decode_copy=p.decode_copy,
            parameter_count=p.parameter_count,
            n_ctx=p.config.n_positions,
            vocab_size=p.config.vocab_size,
            hidden_size=p.hidden_size,
            cached_sessions=len(self.engine.cache),
            cached_tokens=self.engine.cache.cached_tokens,
            resident_bytes=resident_bytes(),
            eos_token_id=p.config.eos_token_id,
            kv_max_tokens=self.engine.cache.max_tokens,
            cpu_seconds=cpu_seconds(),
            queued_calls=self._queued,
        )

    async def Embed(self, request, context):
        items = [(list(i.token_ids), i.position) for i in request.items]
        hidden = await self._run(self.engine.embed, items)
        return node_pb2.EmbedResponse(hidden=[tensor_to_proto(h) for h in hidden])

    async def Step(self, request, context):
        return await self._step(request)

    async def StepStream(self, requests, context):
        """Steps in arrival order, each answered on the stream with its tag; a step that
        fails is answered with its status (error_mapping), and the stream goes on.

        A relayed step (`reply_to` set) is not answered here: this node sends its
        rows on to the next hop, or, the last of the chain, answers on the
        coordinator's own stream to it (shells.relay). A `listen` request makes
        this stream that coordinator's listener. Written with context.read/write,
        not as a generator, because other streams' steps write to it too."""
        writer = StreamWriter(context)
        registered: list[str] = []
        try:
            while (request := await _next_or_eof(context)) is not grpc.aio.EOF:
                if request.listen:
                    self.listeners.register(request.listen, writer)
                    registered.append(request.listen)
                    await writer.write(node_pb2.StepResponse(tag=request.tag))
                elif request.reply_to:
                    await self._relay(request)
                else:
                    await writer.write(await self._answer(request, "/splitgpt.v1.PartitionNode/StepStream"))
        finally:
            for listener_id in registered:
                self.listeners.unregister(listener_id, writer)

    async def _answer(
        self, request: node_pb2.StepRequest, method: str, onward: node_pb2.StepRequest | None = None
    ) -> node_pb2.StepResponse:
        try:
            reply = await self._step(request, onward)
        except Exception as exc:  # this step's answer, as a unary Step would end
            code, details = status_and_details(exc, method)
            reply = node_pb2.StepResponse(error_code=code_number(code), error_detail=details)
        reply.tag = request.tag
        return reply

    async def _relay(self, request: node_pb2.StepRequest) -> None:
        """Compute, then send the rows to the next hop; the last hop answers the listener.
        A failure here, or a next hop out of reach, goes to the listener on this node."""
        method = "/splitgpt.v1.PartitionNode/StepStream (relay)"
        if not request.forward:
            reply = await self._answer(request, method)
            if not reply.error_code:
                reply.relay_compute_ms.extend(request.relay_compute_ms)
                reply.relay_compute_ms.append(reply.compute_ms)
            await self.listeners.tell(request.reply_to, reply)
            return
        hop = request.forward[0]
        onward = node_pb2.StepRequest(
            sequences=request.sequences,
            concurrent_steps=request.concurrent_steps,
            tag=request.tag,
            forward=request.forward[1:],
            reply_to=request.reply_to,
        )
        reply = await self._answer(request, method, onward)  # the output rows go straight into `onward`
        if reply.error_code:
            await self.listeners.tell(request.reply_to, reply)
            return
        onward.relay_compute_ms.extend(request.relay_compute_ms)
        onward.relay_compute_ms.append(reply.compute_ms)
        try:
            await self.peers.send(hop.address, onward)
        except PeerUnreachable as exc:
            failure = node_pb2.StepResponse(
                tag=request.tag,
                error_code=grpc.StatusCode.UNAVAILABLE.value[0],
                error_detail=f"{self.settings.node_id} could not relay to {hop.address}: {exc}",
                unreachable_address=hop.address,
            )
            await self.listeners.tell(request.reply_to, failure)

    async def _step(self, request: node_pb2.StepRequest, onward: node_pb2.StepRequest | None = None) -> node_pb2.StepResponse:
        """`onward`: a relayed step's request to the next hop, which gets the output rows."""
        started = time.perf_counter()
        engine = self.engine
        sampled = engine.is_last  # only the last partition samples: the others skip the conversion
        batch = StepBatch(
            [
                SequenceStep(
                    s.session_id,
                    s.position,
                    s.length,
                    _sampling(s) if sampled else NOT_SAMPLED,
                    tuple(s.block_hashes),
                    s.reuse_blocks,
                )
                for s in request.sequences
            ],
            tensor_from_proto(request.hidden),
            concurrent_steps=max(1, request.concurrent_steps),
        )
        # Inline only while the executor has nothing of this engine's: the engine is
        # not thread-safe, and the loop checks and runs this with nothing in between.
        if not self._queued and engine.inline_worthy(batch.hidden.shape[0], INLINE_STEP_MAX_ROW_PARAMETERS):
            result = engine.step(batch)  # a small step: cheaper than the hand-off to the worker and back
        else:
            result = await self._run(engine.step, batch)
        reply = node_pb2.StepResponse(
            results=[
                node_pb2.SequenceResult(session_id=s.session_id, token_id=t, logprob=lp)
                for s, t, lp in zip(batch.sequences, result.token_ids, result.logprobs, strict=False)
            ]
        )
        for item, top in zip(reply.results, result.top_logprobs, strict=False):
            if top:
                item.top_token_ids.extend(t for t, _ in top)
                item.top_logprobs.extend(lp for _, lp in top)
        if result.hidden is not None:
            fill_tensor(reply.hidden if onward is None else onward.hidden, result.hidden)
        if result.next_input is not None:
            fill_tensor(reply.next_input, result.next_input)
        reply.compute_ms = (time.perf_counter() - started) * 1000
        return reply

    async def Release(self, request, context):
        released = await self._run(self.engine.release, list(request.session_ids))
        return node_pb2.ReleaseResponse(released=released)

    async def ReadOutputs(self, request, context):
        rows = await self._run(self.engine.outputs, request.session_id, request.start, request.end)
        return node_pb2.ReadOutputsResponse(hidden=tensor_to_proto(rows))

    async def ExportSession(self, request, context):
        """The session's copy, taken on the torch thread between steps; each chunk (a
        layer's K/V is megabytes) is encoded there too, one at a time as the stream drains."""
        snapshot = await self._run(self.engine.export_session, request.session_id)
        chunks = session_chunks(request.session_id, snapshot)
        while (chunk := await self._run(next, chunks, None)) is not None:
            yield chunk

    async def ImportSession(self, request_iterator, context):
        """Read and check the stream as it arrives (SnapshotReader bounds it to this
        partition's layers + 1 chunks), then load the session on the torch thread."""
        reader = SnapshotReader(self.engine.partition.n_local_layers)
        async for chunk in request_iterator:
            reader.add(chunk)
        session_id, snapshot = reader.snapshot()
        return node_pb2.ImportSessionResponse(length=await self._run(self.engine.import_session, session_id, snapshot))

    async def PullSession(self, request, context):
        """ImportSession of the source replica's export, read from it here (shells.session_pull)."""
        layers = self.engine.partition.n_local_layers
        snapshot = await read_session(
            self.peers.security, request.source_address, request.session_id, layers, context.time_remaining()
        )
        return node_pb2.ImportSessionResponse(length=await self._run(self.engine.import_session, request.session_id, snapshot))


# Hidden states travel as float32 at most (core.tensors).
WIRE_BYTES_PER_VALUE = 4


def node_receive_limit(settings: NodeSettings) -> int:
    """The largest message this node accepts: the hidden rows of the largest
    step its KV budget admits (a step cannot add more positions than the cache
    holds), or, with a budget under two contexts, an imported session's largest
    chunk (one layer's keys and values at its longest), plus room for the ids,
    hashes and sampling beside them."""
    config = load_config(resolve_model_dir(settings.model_id))
    rows = max(settings.kv_max_tokens, 2 * min(settings.kv_max_tokens, config.n_positions))
    return rows * config.n_embd * WIRE_BYTES_PER_VALUE + SERVICE_RECEIVE_BYTES


async def start(settings: NodeSettings, executor: Executor | None = None) -> GrpcServer:
    """Bind and report NOT_SERVING at once, load the weights, then SERVING.

    `executor` runs the torch work, one call at a time: the process's main
    thread in `main` (shells.main_thread says why), else a worker thread of its own.
    """
    security = InternalSecurity.from_settings(settings)
    server = GrpcServer(SERVICE_NAME, settings.host, settings.port, security, node_receive_limit(settings))
    # Before the weights load: a loading node is visible (up, no splitgpt_node_info yet).
    metrics = NodeMetrics(settings)
    metrics.is_draining = lambda: server.draining
    metrics_server = serve_metrics(metrics.registry, settings.metrics_host or settings.host, settings.metrics_port, "node")
    if metrics_server is not None:
        server.on_stop.append(metrics_server.close)
    executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
    servicer = PartitionNodeServicer(settings, executor)
    server.on_stop.append(servicer.peers.close)
    security = servicer.peers.security
    if security.server_cert is not None and (security.ca is None or (security.client_ca and not security.client_cert)):
        # Relay: this node calls the next node as the coordinator does, so it needs
        # the calling side too; without it each relayed step fails over to the star.
        log.warning(
            "%s serves TLS but cannot call other nodes over it: set SPLITGPT_TLS_CA, SPLITGPT_TLS_CLIENT_CERT and "
            "SPLITGPT_TLS_CLIENT_KEY here as on the coordinator, or relayed steps from this node fall back to the "
            "coordinator's star, and sessions drained to it travel through the coordinator (both slower)",
            settings.node_id,
        )
    server.add(node_pb2_grpc.add_PartitionNodeServicer_to_server, servicer)
    await server.start()
    log.info("%s listening on %s:%d, loading weights", settings.node_id, settings.host, server.port)
    load_started = time.perf_counter()
    engine = await asyncio.get_running_loop().run_in_executor(executor, load_engine, settings)
    metrics.attach(engine, time.perf_counter() - load_started)
    servicer.attach(engine)
    p = engine.partition
    log.info(
        "%s serving blocks [%d, %d)%s of %s: %.1f M parameters, %.1f MB%s",
        settings.node_id, p.start, p.end, " + embedding/head" if p.holds_head else "",
        settings.model_id, p.parameter_count / 1e6, p.parameter_bytes / 1e6,
        f" + a {p.decode_copy_bytes / 1e6:.1f} MB decode copy" if p.decode_copy else "",
    )  # fmt: skip
    await server.set_serving(True)
    return server


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_cli(NodeSettings, argv, "splitgpt node", "Serve one partition of the model.")
    configure(settings.log_level)
    compute = MainThreadExecutor()
    relay = SignalRelay()
    relay.install()
    failed: list[BaseException] = []

    async def run() -> None:
        server = await start(settings, compute)
        await server.run_until_signal(drain_s=settings.drain_s, relay=relay)

    def serve() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # re-raised on the main thread below
            failed.append(exc)
        finally:
            compute.shutdown()

    server_thread = threading.Thread(target=serve, name="grpc-loop")
    server_thread.start()
    compute.serve()  # torch work on this, the main thread, until the server's loop ends
    server_thread.join()
    if failed:
        exc = failed[0]
        if isinstance(exc, (ModelSourceError, PartitionError, InternalSecurityError, MetricsPortError)):
            log.error("%s cannot start: %s", settings.node_id, exc)
            raise SystemExit(2) from None
        raise exc


async def _next_or_eof(context: grpc.aio.ServicerContext):
    """The stream's next request; EOF also when the server has stopped under it (a
    forced stop, with a peer's relay stream still open): nobody is left to answer."""
    try:
        return await context.read()
    except grpc.aio.BaseError:  # cygrpc's _ServerStoppedError
        return grpc.aio.EOF


def _sampling(step: node_pb2.SequenceStep):
    spec = sampling_from_proto(step.sampling)
    return dataclasses.replace(spec, top_logprobs=step.top_logprobs) if step.top_logprobs else spec
