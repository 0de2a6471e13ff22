"""The cluster config: the model, how it is split, and the nodes serving each part.

    {"model": "models/tiny-gpt2", "num_partitions": 3, "split": "even",
     "nodes": [{"id": "part0-r0", "address": "127.0.0.1:50100", "partition": 0}, ...]}

Several nodes with one partition are replicas of it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field, model_validator


class NodeEntry(BaseModel):
    id: str
    address: str
    partition: int = Field(ge=0)


class ClusterConfig(BaseModel):
    model: str | None = None  # MODEL_ID when absent
    num_partitions: int = Field(ge=1)
    split: str | list[list[int]] = "even"
    nodes: list[NodeEntry]

    @model_validator(mode="after")
    def _check(self) -> ClusterConfig:
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

    @classmethod
    def load(cls, path: Path) -> ClusterConfig:
        return cls.model_validate(json.loads(Path(path).read_text()))

    def dump(self, path: Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2, exclude_none=True) + "\n")
