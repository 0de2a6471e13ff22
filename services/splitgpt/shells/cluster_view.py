"""The coordinator's view of its nodes: which replicas exist, which are usable.

The configured nodes, expanded through DNS (a name that resolves to several
addresses is that many replicas), probed with grpc.health.v1 at an interval,
and identity-checked (a node must serve the blocks the config gives its
partition) before the router may send it work. Each SERVING replica's memory
(weights, process resident set) is read from its Info every `info_interval_s`.
The servicer only reads this.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.cluster_config import ModelConfig, NodeEntry
from ..core.partitioning import PartitionError, resolve_split
from ..core.routing import Replica, Router
from ..rpc import node_pb2
from .grpc_runtime import probe_health
from .internal_auth import InternalSecurity
from .node_client import GrpcNodeClient
from .step_stream import StepTable

if TYPE_CHECKING:  # the settings' module imports this one
    from .coordinator_service import CoordinatorSettings

log = logging.getLogger("splitgpt.coordinator")


# A replica whose address left DNS and which is down goes after this long: time for the
# replica alerts (`for: 1m`) to fire and be seen, and for a restart at the same address.
GONE_FROM_DNS_GRACE_S = 300.0


@dataclass
class NodeMemory:
    """A replica's bytes, KV use and CPU as its last Info said them."""

    weight_bytes: int = 0
    resident_bytes: int = 0  # its process's RSS: grows with the KV cache, hence refreshed
    kv_tokens: int = 0
    kv_max_tokens: int = 0
    queued_calls: int = 0
    cpu_seconds: float = 0.0
    cpu_percent: float = 0.0  # of one core, between the last two reads
    read_at: float = 0.0


NO_MEMORY = NodeMemory()  # a replica not (or no longer) SERVING: unknown, shown as 0


class NodeRefused(Exception):
    """A node offered at run time serves something else than the plan needs there."""


class Cluster:
    """One split of one model: its configured replicas, kept current by grpc.health.v1 probes.

    A node address whose host name resolves to several addresses (compose
    `--scale`, a Kubernetes headless Service) stands for that many replicas;
    the names are resolved again every `dns_refresh_s` and new ones join.
    """

    def __init__(
        self,
        config: ModelConfig,
        settings: CoordinatorSettings,
        security: InternalSecurity | None = None,
        steps: StepTable | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.security = security  # the token and TLS of every node client
        self.router = Router(config.num_partitions, strategy=settings.routing)
        self.clients: dict[str, GrpcNodeClient] = {}
        # Shared by every model's clusters in one coordinator (new_step_table says why).
        self.steps = steps or new_step_table(settings)
        self.model: node_pb2.NodeInfo | None = None  # the last partition's view of the model
        self.changed = asyncio.Event()
        self._next_dns = 0.0
        self._scaled: set[str] = set()  # node entries whose name resolved to several addresses
        self._gone_since: dict[str, float] = {}  # replica id -> when its address left DNS
        self._memory: dict[str, NodeMemory] = {}  # replica id -> its last Info's bytes, while SERVING
        self._next_info: dict[str, float] = {}  # replica id -> when to read its memory again
        self._removed: set[str] = set()  # replica ids an operator removed: not re-added from config or DNS
        # One refresh at a time: the health loop's and a registration's would both add a new node.
        self._refreshing = asyncio.Lock()
        self._clock = time.monotonic

    @property
    def expected_model_id(self) -> str | None:
        """The checkpoint id its nodes must report, where the config names one."""
        return self.config.model

    def find(self, node_id: str) -> Replica | None:
        return next((r for r in self.router.replicas if r.node_id == node_id), None)

    def client_for(self, replica: Replica) -> GrpcNodeClient:
        return self.clients[replica.node_id]

    async def refresh_replicas(self) -> None:
        async with self._refreshing:
            await self._refresh_replicas()

    async def _refresh_replicas(self) -> None:
        known = {r.node_id for r in self.router.replicas}
        for entry in self.config.nodes:
            scaled = entry.id in self._scaled
            expanded = await expand_address(entry.id, entry.address, per_address=scaled)
            if scaled and [node_id for node_id, _ in expanded] == [entry.id]:
                continue  # the name does not resolve just now: keep its replicas, the probes tell their health
            if any(node_id != entry.id for node_id, _ in expanded):
                # Scaled out: from now on its replicas are named by address, also when
                # one is left (a killed replica stays visible as down, the survivor keeps
                # its id), and the replica named by the bare host name, one of these
                # same addresses, goes: it would be counted twice.
                self._scaled.add(entry.id)
                for replica in [r for r in self.router.replicas if r.node_id == entry.id]:
                    self._retire(replica, "is now known by its addresses")
                self._forget_gone(entry.id, {node_id for node_id, _ in expanded})
            for node_id, address in expanded:
                if node_id not in known and node_id not in self._removed:
                    self.router.replicas.append(Replica(node_id, address, entry.partition))
                    self.clients[node_id] = GrpcNodeClient(address, self.settings.step_timeout_s, self.security, self.steps)
                    log.info("replica %s at %s serves partition %d", node_id, address, entry.partition)

    async def add_node(self, entry: NodeEntry) -> Replica:
        """A node registered at run time: checked (`check_node`), then probed at once,
        so it takes sequences from the next routing decision on."""
        self._removed.discard(entry.id)
        self.config.nodes.append(entry)
        await self.refresh_replicas()
        replica = self.find(entry.id)
        await self._probe(replica)
        self.changed.set()
        return replica

    def remove_node(self, node_id: str, why: str) -> None:
        """Forget the replica (and its config entry); sequences on it move at their next step."""
        self._removed.add(node_id)
        self.config.nodes = [n for n in self.config.nodes if n.id != node_id]
        replica = self.find(node_id)
        if replica is not None:
            self._retire(replica, why)
        self.changed.set()

    async def check_node(self, node_id: str, address: str) -> NodeEntry:
        """Ask a node what it serves; NodeRefused, saying what differs, unless it is
        this model, split as this cluster's plan has it. Returns its config entry."""
        client = GrpcNodeClient(address, self.settings.step_timeout_s, self.security, self.steps)
        try:
            info = await client.info(self.settings.probe_timeout_s * 5)
        except Exception as exc:
            raise NodeRefused(f"{node_id} at {address} did not answer Info: {exc}") from None
        finally:
            await client.close()
        problems = self.mismatches(info)
        if problems:
            raise NodeRefused(f"{node_id} at {address} does not fit model {self.config.name or self.config.model!r}: "
                              + "; ".join(problems))  # fmt: skip
        return NodeEntry(id=node_id, address=address, partition=info.partition)

    def mismatches(self, info: node_pb2.NodeInfo) -> list[str]:
        """How a node's Info differs from what this cluster's plan needs of its partition."""
        problems = []
        expected_id = self.expected_model_id
        if expected_id and info.model_id and info.model_id != expected_id:
            problems.append(f"it serves model {info.model_id!r}, not {expected_id!r}")
        known = self.model
        if known is not None:
            for field_name in ("n_layer", "hidden_size", "vocab_size", "n_ctx"):
                got, want = getattr(info, field_name), getattr(known, field_name)
                if got != want:
                    problems.append(f"its checkpoint has {field_name}={got}, the model's nodes {want}")
        if info.num_partitions != self.config.num_partitions:
            problems.append(f"it is split into {info.num_partitions} partitions, the plan into {self.config.num_partitions}")
        elif info.partition >= self.config.num_partitions:
            problems.append(f"it serves partition {info.partition} of {self.config.num_partitions}")
        else:
            try:
                expected = resolve_split(
                    self.config.split, info.n_layer, self.config.num_partitions, info.vocab_size, info.hidden_size
                )[info.partition]
            except PartitionError as exc:
                problems.append(f"the plan's split does not apply to its checkpoint: {exc}")
            else:
                if (info.start_block, info.end_block) != expected:
                    problems.append(
                        f"it serves blocks [{info.start_block}, {info.end_block}) as partition {info.partition}, "
                        f"the plan gives that partition blocks [{expected[0]}, {expected[1]})"
                    )
        return problems

    def _forget_gone(self, entry_id: str, present: set[str]) -> None:
        """Retire the replicas of a scaled name whose address has left DNS and that are
        down, once that has lasted GONE_FROM_DNS_GRACE_S: a pod or container that was
        replaced (with a new address) or scaled away. Until then it shows as down (and
        the replica alerts fire); one still answering its probes is never retired."""
        now = self._clock()
        for replica in [r for r in self.router.replicas if r.node_id.startswith(f"{entry_id}@")]:
            if replica.node_id in present:
                self._gone_since.pop(replica.node_id, None)
                continue
            since = self._gone_since.setdefault(replica.node_id, now)
            if now - since >= GONE_FROM_DNS_GRACE_S and not self.router.usable(replica):
                self._gone_since.pop(replica.node_id)
                self._retire(replica, f"left DNS {now - since:.0f}s ago and is down")

    def _retire(self, replica: Replica, why: str) -> None:
        """No more routing to this replica; sequences on it move at their next step.
        Its client stays open for the releases still to come."""
        replica.status = "RETIRED"
        replica.down.set()
        self.router.replicas.remove(replica)
        self._forget_memory(replica.node_id)
        log.info("replica %s %s: retired", replica.node_id, why)

    async def probe_all(self) -> None:
        if time.monotonic() >= self._next_dns:
            await self.refresh_replicas()
            self._next_dns = time.monotonic() + self.settings.dns_refresh_s
        due = [r for r in self.router.replicas if self.router.due_for_probe(r)]
        await asyncio.gather(*(self._probe(r) for r in due))
        self.changed.set()

    async def _probe(self, replica: Replica) -> None:
        client = self.clients[replica.node_id]
        status = await probe_health(client.channel, timeout_s=self.settings.probe_timeout_s)
        if status != "SERVING":
            replica.layers = None  # re-check what it serves when it comes back
        elif replica.layers is None:
            status = await self._check_identity(replica, client)
        elif self._clock() >= self._next_info.get(replica.node_id, 0.0):
            await self._refresh_memory(replica, client)
        if status != replica.status:
            log.info(
                "%s (%s, partition %d): %s -> %s", replica.node_id, replica.address, replica.partition, replica.status, status
            )
        self.router.record_probe(replica, status)
        if replica.status != "SERVING":  # the router's verdict: one missed probe is not yet down
            self._forget_memory(replica.node_id)  # a dead or draining process's last RSS is no news

    async def _check_identity(self, replica: Replica, client: GrpcNodeClient) -> str:
        """A node must serve the blocks this config gives its partition."""
        try:
            info = await client.info(self.settings.probe_timeout_s)
        except Exception as exc:
            log.warning("%s: Info failed: %s", replica.node_id, exc)
            return "UNREACHABLE"
        try:
            expected = resolve_split(
                self.config.split, info.n_layer, self.config.num_partitions, info.vocab_size, info.hidden_size
            )[replica.partition]
        except PartitionError as exc:
            log.error("cluster config split: %s", exc)
            return "MISCONFIGURED"
        wrong_model = self.expected_model_id and info.model_id and info.model_id != self.expected_model_id
        if wrong_model:
            log.error("%s serves model %r; the config expects %r", replica.node_id, info.model_id, self.expected_model_id)
            return "MISCONFIGURED"
        if (info.start_block, info.end_block) != expected or info.num_partitions != self.config.num_partitions:
            log.error(
                "%s serves blocks [%d, %d) of %d partitions; the config expects [%d, %d) of %d",
                replica.node_id, info.start_block, info.end_block, info.num_partitions,
                *expected, self.config.num_partitions,
            )  # fmt: skip
            return "MISCONFIGURED"
        replica.layers = (info.start_block, info.end_block)
        self._remember(replica.node_id, info)
        if info.holds_head:
            self.model = info
        return "SERVING"

    def memory(self, node_id: str) -> NodeMemory:
        return self._memory.get(node_id, NO_MEMORY)

    async def _refresh_memory(self, replica: Replica, client: GrpcNodeClient) -> None:
        """One Info call per replica per `info_interval_s`, beside the health probe:
        never per step. A failed one keeps the last figures; the health probe, not
        this, decides whether the replica is down."""
        self._next_info[replica.node_id] = self._clock() + self.settings.info_interval_s
        try:
            info = await client.info(self.settings.probe_timeout_s)
        except Exception as exc:
            log.debug("%s: Info for its memory failed: %s", replica.node_id, exc)
            return
        self._remember(replica.node_id, info)

    def _remember(self, node_id: str, info: node_pb2.NodeInfo) -> None:
        now = self._clock()
        last = self._memory.get(node_id)
        cpu_percent = 0.0
        if last is not None and now > last.read_at and info.cpu_seconds >= last.cpu_seconds:
            cpu_percent = 100 * (info.cpu_seconds - last.cpu_seconds) / (now - last.read_at)
        self._memory[node_id] = NodeMemory(
            info.weight_bytes, info.resident_bytes, info.cached_tokens, info.kv_max_tokens, info.queued_calls,
            info.cpu_seconds, cpu_percent, now,
        )  # fmt: skip
        self._next_info[node_id] = now + self.settings.info_interval_s

    def lifecycle(self, replica: Replica) -> str:
        """What an operator sees: online, busy (its KV budget full, or steps queued
        behind one another), offline (not answering, or NOT_SERVING), error
        (serving another model or split, or its circuit open after failed steps),
        cordoned or draining (by an operator)."""
        if replica.status == "MISCONFIGURED":
            return "error"
        if replica.status != "SERVING":
            return "offline"
        if replica.circuit == "open":
            return "error"
        if replica.draining:
            return "draining"
        if replica.cordoned:
            return "cordoned"
        memory = self.memory(replica.node_id)
        if memory.queued_calls > 1 or (memory.kv_max_tokens and memory.kv_tokens >= 0.9 * memory.kv_max_tokens):
            return "busy"
        return "online"

    def _forget_memory(self, node_id: str) -> None:
        self._memory.pop(node_id, None)
        self._next_info.pop(node_id, None)

    def ready(self) -> bool:
        return self.model is not None and self.router.ready()

    async def watch(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.settings.health_interval_s)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()))


def new_step_table(settings: CoordinatorSettings) -> StepTable:
    """One tag space for every node stream of a coordinator; with relay, each stream
    registers as this coordinator's listener (a fresh id per process: shells.relay)."""
    return StepTable(f"coordinator-{uuid.uuid4().hex[:12]}" if settings.relay else None)


async def expand_address(node_id: str, address: str, per_address: bool = False) -> list[tuple[str, str]]:
    """`host:port` -> one (id, address) per address the host resolves to, each id
    `node_id@ip`; a name with one address keeps `node_id` unless `per_address`."""
    host, _, port = address.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        return [(node_id, address)]  # a literal address is one replica
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError:
        return [(node_id, address)]  # unresolvable now: probed (and reported) as it is
    addresses = sorted({info[4][0] for info in infos})
    if len(addresses) <= 1 and not per_address:
        return [(node_id, address)]
    return [(f"{node_id}@{ip}", f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}") for ip in addresses]
