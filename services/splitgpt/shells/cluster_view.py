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

from ..core.cluster_config import ClusterConfig
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
    """A replica's bytes as its last Info said them."""

    weight_bytes: int = 0
    resident_bytes: int = 0  # its process's RSS: grows with the KV cache, hence refreshed


NO_MEMORY = NodeMemory()  # a replica not (or no longer) SERVING: unknown, shown as 0


class Cluster:
    """The configured replicas, kept current by grpc.health.v1 probes.

    A node address whose host name resolves to several addresses (compose
    `--scale`, a Kubernetes headless Service) stands for that many replicas;
    the names are resolved again every `dns_refresh_s` and new ones join.
    """

    def __init__(self, config: ClusterConfig, settings: CoordinatorSettings, security: InternalSecurity | None = None) -> None:
        self.config = config
        self.settings = settings
        self.security = security  # the token and TLS of every node client
        self.router = Router(config.num_partitions, strategy=settings.routing)
        self.clients: dict[str, GrpcNodeClient] = {}
        # One tag space for every node stream; with relay, each stream registers
        # as this coordinator's listener (a fresh id per process: shells.relay).
        self.steps = StepTable(f"coordinator-{uuid.uuid4().hex[:12]}" if settings.relay else None)
        self.model: node_pb2.NodeInfo | None = None  # the last partition's view of the model
        self.changed = asyncio.Event()
        self._next_dns = 0.0
        self._scaled: set[str] = set()  # node entries whose name resolved to several addresses
        self._gone_since: dict[str, float] = {}  # replica id -> when its address left DNS
        self._memory: dict[str, NodeMemory] = {}  # replica id -> its last Info's bytes, while SERVING
        self._next_info: dict[str, float] = {}  # replica id -> when to read its memory again
        self._clock = time.monotonic

    def client_for(self, replica: Replica) -> GrpcNodeClient:
        return self.clients[replica.node_id]

    async def refresh_replicas(self) -> None:
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
                if node_id not in known:
                    self.router.replicas.append(Replica(node_id, address, entry.partition))
                    self.clients[node_id] = GrpcNodeClient(address, self.settings.step_timeout_s, self.security, self.steps)
                    log.info("replica %s at %s serves partition %d", node_id, address, entry.partition)

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
        self._memory[node_id] = NodeMemory(info.weight_bytes, info.resident_bytes)
        self._next_info[node_id] = self._clock() + self.settings.info_interval_s

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
