"""Every model a coordinator serves, each as one or more splits over its nodes.

A model is served by a split: a cut of its blocks into partitions and the nodes
serving them (a `Cluster`, with its router and its generation engine). A
rollout adds a new split of the same model beside the old one: once every
partition of the new split has a SERVING node, new requests go to it, the old
one's running sequences finish where they are, and then its nodes leave.

Node management lives here too, because it spans a model's splits: register a
node (checked against the plan first), cordon, drain (its sequences' K/V move
to another replica: core.migration), remove.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.cluster_config import ClusterConfig, ModelConfig
from ..core.engine import GenerationEngine, GenerationError
from ..core.migration import DrainProgress
from ..core.routing import Replica
from .cluster_view import Cluster, NodeRefused, new_step_table
from .internal_auth import InternalSecurity

if TYPE_CHECKING:  # the settings' module imports this one
    from .coordinator_service import CoordinatorSettings

log = logging.getLogger("splitgpt.coordinator")

ROLLOUT_TIMEOUT_S = 300.0
DRAIN_TIMEOUT_S = 120.0
RETIRE_POLL_S = 0.2


@dataclass(eq=False)
class Split:
    """One split of a model: its cluster and, once the model is known, its engine."""

    generation: int
    cluster: Cluster
    engine: GenerationEngine | None = None
    retiring: bool = False  # a newer split takes the new requests; this one finishes its own

    @property
    def running(self) -> int:
        return len(self.engine.tasks()) if self.engine else 0


@dataclass(eq=False)
class ServedModel:
    name: str
    splits: list[Split] = field(default_factory=list)

    def current(self) -> Split:
        """The split new requests go to: the newest that is not retiring and is ready;
        the newest not retiring when none is ready yet (its sequences wait for nodes)."""
        live = [s for s in self.splits if not s.retiring]
        ready = [s for s in live if s.cluster.ready()]
        return (ready or live or self.splits)[-1]

    def ready(self) -> bool:
        return any(s.cluster.ready() for s in self.splits if not s.retiring)


@dataclass
class DrainOutcome:
    node_id: str
    progress: DrainProgress
    removed: bool


class ServedModels:
    def __init__(
        self,
        config: ClusterConfig,
        settings: CoordinatorSettings,
        security: InternalSecurity | None,
        make_engine: Callable[[Cluster], GenerationEngine],
    ) -> None:
        self.settings = settings
        self.security = security
        self._make_engine = make_engine
        self.steps = new_step_table(settings)  # one tag space for all node streams
        self.changed = asyncio.Event()
        self.models: dict[str, ServedModel] = {}
        self._generations = 0
        self._background: set[asyncio.Task] = set()
        for model_config in config.models:
            name = model_config.served_name(settings.model_id)
            self.models[name] = ServedModel(name, [self._new_split(model_config)])

    def _new_split(self, model_config: ModelConfig) -> Split:
        cluster = Cluster(model_config, self.settings, self.security, self.steps)
        cluster.changed = self.changed
        self._generations += 1
        return Split(self._generations, cluster)

    # -- lookups ----------------------------------------------------------------

    @property
    def default(self) -> ServedModel:
        return next(iter(self.models.values()))

    def get(self, name: str) -> ServedModel:
        if not name:
            return self.default
        model = self.models.get(name)
        if model is None:
            raise GenerationError("not_found", f"no model named {name!r}: this cluster serves {sorted(self.models)}")
        return model

    def splits(self) -> list[tuple[ServedModel, Split]]:
        return [(m, s) for m in self.models.values() for s in m.splits]

    def clusters(self) -> list[Cluster]:
        return [s.cluster for _, s in self.splits()]

    def engines(self) -> list[GenerationEngine]:
        return [s.engine for _, s in self.splits() if s.engine is not None]

    def engine(self, split: Split) -> GenerationEngine | None:
        """The split's engine, built once its model is known (a last partition answered Info)."""
        if split.engine is None and split.cluster.model is not None:
            split.engine = self._make_engine(split.cluster)
        return split.engine

    def locate(self, node_id: str) -> tuple[ServedModel, Split, Replica]:
        for model, split in self.splits():
            replica = split.cluster.find(node_id)
            if replica is not None:
                return model, split, replica
        raise GenerationError("not_found", f"no node {node_id!r} in this cluster")

    def ready(self) -> bool:
        return all(m.ready() for m in self.models.values())

    # -- health -----------------------------------------------------------------

    async def watch(self) -> None:
        while True:
            await asyncio.gather(*(c.probe_all() for c in self.clusters()))
            await asyncio.sleep(self.settings.health_interval_s)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for engine in self.engines():
            await engine.close()
        await asyncio.gather(*(c.close() for c in self.clusters()))

    # -- node management ----------------------------------------------------------

    async def register(self, model_name: str, node_id: str, address: str) -> tuple[ServedModel, Split, Replica]:
        """Add a node at run time to the model's current split, after checking that it
        serves that model with the block range the split's plan gives its partition."""
        if not node_id or not address:
            raise GenerationError("invalid", "a node needs an id and an address (host:port)")
        if any(s.cluster.find(node_id) or any(n.id == node_id for n in s.cluster.config.nodes) for _, s in self.splits()):
            raise GenerationError("conflict", f"a node {node_id!r} is already in this cluster")
        model = self.get(model_name)
        split = model.current()
        try:
            entry = await split.cluster.check_node(node_id, address)
        except NodeRefused as exc:
            raise GenerationError("invalid", str(exc)) from None
        replica = await split.cluster.add_node(entry)
        log.info("registered %s at %s: model %s, partition %d", node_id, address, model.name, entry.partition)
        return model, split, replica

    def cordon(self, node_id: str, cordoned: bool = True) -> tuple[ServedModel, Split, Replica]:
        model, split, replica = self.locate(node_id)
        replica.cordoned = cordoned
        if not cordoned:
            replica.draining = False
        self.changed.set()
        log.info("%s %s", node_id, "cordoned: no new sequences" if cordoned else "uncordoned")
        return model, split, replica

    def remove(self, node_id: str) -> tuple[ServedModel, Split, Replica]:
        model, split, replica = self.locate(node_id)
        split.cluster.remove_node(node_id, "removed by an operator")
        return model, split, replica

    async def drain(self, node_id: str, timeout_s: float = 0.0) -> DrainOutcome:
        """Cordon the node, move its sequences' K/V to other replicas of its partition
        (each between two of its steps), then remove it. Without another usable replica
        of its partition there is nowhere to move to: refused, nothing changes."""
        _, split, replica = self.locate(node_id)
        others = [r for r in split.cluster.router.of_partition(replica.partition) if r is not replica]
        if not any(split.cluster.router.usable(r) and not r.cordoned for r in others):
            raise GenerationError(
                "conflict",
                f"{node_id} is the only usable replica of partition {replica.partition}: "
                "register another node for it first, or remove this one (its requests then fail over)",
            )
        replica.cordoned = replica.draining = True
        engine = split.engine
        deadline = time.monotonic() + (timeout_s or DRAIN_TIMEOUT_S)
        while engine is not None and (engine.sequences_on(replica) or replica.in_flight):
            if time.monotonic() >= deadline:
                log.warning("%s: drain timed out with %d sequences left", node_id, engine.sequences_on(replica))
                return DrainOutcome(node_id, engine.drain_progress(replica), removed=False)
            await asyncio.sleep(0.02)
        progress = engine.drain_progress(replica) if engine is not None else DrainProgress()
        if engine is not None:
            engine.forget_drain(replica)
        split.cluster.remove_node(node_id, f"drained ({progress.moved} sequences moved)")
        return DrainOutcome(node_id, progress, removed=True)

    # -- rollout ------------------------------------------------------------------

    async def rollout(self, model_name: str, model_config: ModelConfig, timeout_s: float = 0.0) -> tuple[Split, list[str]]:
        """Serve the model with a new split beside its current one; once the new one is
        ready, the old ones retire: no new requests, and their nodes leave when their
        running sequences have finished. Returns the new split and the retiring node ids."""
        model = self.get(model_name)
        ids = [n.id for n in model_config.nodes]
        taken = sorted(set(ids) & {r.node_id for c in self.clusters() for r in c.router.replicas})
        if taken:
            raise GenerationError("conflict", f"node ids {taken} are already in this cluster")
        if not model_config.model:
            model_config = model_config.model_copy(update={"model": model.current().cluster.config.model})
        split = self._new_split(model_config.model_copy(update={"name": model.name}))
        model.splits.append(split)
        deadline = time.monotonic() + (timeout_s or ROLLOUT_TIMEOUT_S)
        self.changed.set()
        while not split.cluster.ready():  # the health loop probes it with the others
            if time.monotonic() >= deadline:
                model.splits.remove(split)
                states = {r.node_id: r.status for r in split.cluster.router.replicas}
                await split.cluster.close()
                raise GenerationError("unavailable", f"the new split of {model.name} did not become ready: {states}")
            await asyncio.sleep(min(0.2, self.settings.health_interval_s))
        retiring = [s for s in model.splits if s is not split and not s.retiring]
        for old in retiring:
            old.retiring = True
            self._in_background(self._retire_when_idle(model, old))
        self.changed.set()
        log.info("model %s: split %d (%d partitions) takes new requests", model.name, split.generation,
                 model_config.num_partitions)  # fmt: skip
        return split, [r.node_id for old in retiring for r in old.cluster.router.replicas]

    async def _retire_when_idle(self, model: ServedModel, split: Split) -> None:
        while split.running:  # noqa: ASYNC110 (a poll: the engine tells no one when it empties)
            await asyncio.sleep(RETIRE_POLL_S)
        for replica in list(split.cluster.router.replicas):
            split.cluster.remove_node(replica.node_id, f"its split {split.generation} of {model.name} was replaced")
        model.splits.remove(split)
        if split.engine is not None:
            await split.engine.close()
        await split.cluster.close()
        self.changed.set()
        log.info("model %s: split %d retired", model.name, split.generation)

    def _in_background(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
