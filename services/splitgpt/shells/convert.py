"""Protobuf <-> core types, shared by the servers and the clients."""

from __future__ import annotations

import torch

from ..core import tensors
from ..core.sampling import SamplingSpec
from ..rpc import common_pb2


def tensor_to_proto(t: torch.Tensor) -> common_pb2.Tensor:
    return fill_tensor(common_pb2.Tensor(), t)


def fill_tensor(message: common_pb2.Tensor, t: torch.Tensor) -> common_pb2.Tensor:
    """Write `t` into a Tensor field in place (no intermediate message to copy)."""
    message.data, message.dtype, shape = tensors.encode(t)
    message.shape[:] = shape
    return message


def tensor_from_proto(t: common_pb2.Tensor) -> torch.Tensor:
    """A read-only view over the message's bytes: hidden states are consumed, never written."""
    return tensors.decode(t.data, t.dtype, list(t.shape), copy=False)


def sampling_to_proto(s: SamplingSpec) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(
        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed, suppress_token_ids=list(s.suppress)
    )


def sampling_from_proto(p: common_pb2.SamplingParams) -> SamplingSpec:
    return SamplingSpec(
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p if p.top_p > 0 else 1.0,
        seed=p.seed if p.HasField("seed") else None,
        suppress=tuple(p.suppress_token_ids),
    )
