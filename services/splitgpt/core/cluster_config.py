"""The cluster config: the models served, how each is split, and the nodes serving each part.

    {"models": [
      {"name": "tiny", "model": "models/tiny-gpt2", "num_partitions": 3, "split": "even",
       "nodes": [{"id": "tiny-part0-r0", "address": "127.0.0.1:50100", "partition": 0}, ...]},
      {"name": "small", "model": "models/gpt2-small", "num_partitions": 2, "nodes": [...]}]}

The first model is the default (a request that names none runs on it). One
model alone may also be written flat, as before there were several:

    {"model": "models/tiny-gpt2", "num_partitions": 3, "split": "even", "nodes": [...]}

Several nodes with one partition are replicas of it. Node ids are unique over
the whole cluster: management (cordon, drain) names a node by its id.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

# A model's name: any printable text up to 256 characters (a default model is named by
# its checkpoint's id, which may be a directory path).
MODEL_NAME_PATTERN = r"^[^\x00-\x1f\x7f]{1,256}$"


class NodeEntry(BaseModel):
    id: str
    address: str
    partition: int = Field(ge=0)


class ModelConfig(BaseModel):
    """One model: its checkpoint, its split and its nodes."""

    # What requests call it (`model`); None: the checkpoint's id (`model`, else MODEL_ID).
    name: str | None = Field(None, pattern=MODEL_NAME_PATTERN)
    model: str | None = None  # MODEL_ID when absent
    num_partitions: int = Field(ge=1)
    split: str | list[list[int]] = "even"
    nodes: list[NodeEntry]

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        ids = [n.id for n in self.nodes]
        if len(set(ids)) != len(ids):
            raise ValueError("node ids must be unique")
        for n in self.nodes:
            if n.partition >= self.num_partitions:
                raise ValueError(f"node {n.id} serves partition {n.partition} of {self.num_partitions}")
        empty = sorted(set(range(self.num_partitions)) - {n.partition for n in self.nodes})
        if empty:
            raise ValueError(f"partitions {empty} have no node")
        return self

    def served_name(self, default_model_id: str) -> str:
        return self.name or self.model or default_model_id


class ClusterConfig(BaseModel):
    models: list[ModelConfig] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _flat_is_one_model(cls, data):
        if isinstance(data, dict) and "models" not in data:
            return {"models": [data]}
        return data

    @model_validator(mode="after")
    def _check(self) -> ClusterConfig:
        ids = [n.id for m in self.models for n in m.nodes]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"node ids must be unique over all models: {repeated} repeat")
        # The first may name nothing: it is then named by the coordinator's MODEL_ID.
        names = [m.name or m.model for m in self.models]
        if None in names[1:]:
            raise ValueError("with several models, each after the first needs a `name` or a `model`")
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        return self

    # The default (first) model's fields, as the flat form names them.
    @property
    def default(self) -> ModelConfig:
        return self.models[0]

    @property
    def model(self) -> str | None:
        return self.default.model

    @property
    def num_partitions(self) -> int:
        return self.default.num_partitions

    @property
    def split(self) -> str | list[list[int]]:
        return self.default.split

    @property
    def nodes(self) -> list[NodeEntry]:
        return self.default.nodes

    @classmethod
    def load(cls, path: Path) -> ClusterConfig:
        return cls.model_validate(json.loads(Path(path).read_text()))

    def dump(self, path: Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2, exclude_none=True) + "\n")
