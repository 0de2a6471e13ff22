"""The matrix products of a partition, and which kernel runs them.

On the CPU the step is almost all GEMMs of a few to a few dozen rows against
768-wide weights. For those shapes oneDNN with weights reordered once at load
("packed", as inductor's freezing pass does) runs 1.4-2.4x faster than
`addmm`, which repacks the weight on every call: measured on this 2-core box,
one thread, [16, 768] x [768, 3072] 0.85 ms against 1.79 ms. A block's packed
copy replaces the plain one, unless the node keeps a decode copy for steps of a
few rows (below), where the plain layout is the faster. The tied head
is packed too (see pack_head_weight), while its plain form, the embedding
table, stays mapped from the checkpoint file.

Results differ from `addmm` by float summation order only (about 1e-6
relative); greedy tokens are unchanged on every test prompt, which the
equivalence tests check against Hugging Face. `reference` keeps `addmm`, the
kernel Hugging Face's Conv1D calls, for comparisons without that difference.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

KernelChoice = Literal["auto", "onednn", "reference"]
KERNEL_CHOICES: tuple[str, ...] = ("auto", "onednn", "reference")


class Linear(Protocol):
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


# A partition whose block weights are at least this large runs its steps on
# several threads; one with smaller blocks on one thread. A parallel region
# ends at a barrier that waits for its slowest thread, and on a host whose
# cores other processes share (the other nodes, the coordinator, the gateway)
# that thread is often preempted: measured on the 2-core box with one other
# process busy, a 2-block decode step of the tiny model (64 wide, kilobytes
# of weights) took 0.6 ms on one thread and 17 ms on two. A product that
# streams megabytes of weights gains from a second core (25 against 14 GB/s
# at one row), enough to pay for its barriers. The rule is per partition, not
# per product: changing the thread count between products parks and wakes the
# OpenMP team each time.
PARALLEL_MIN_WEIGHT_BYTES = 1 << 20


def onednn_available(device: torch.device, dtype: torch.dtype) -> bool:
    return (
        device.type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def resolve_kernels(choice: str, device: torch.device, dtype: torch.dtype) -> str:
    """'auto' is oneDNN wherever it can run, else the reference kernel."""
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, not {choice!r}")
    if choice == "auto":
        return "onednn" if onednn_available(device, dtype) else "reference"
    if choice == "onednn" and not onednn_available(device, dtype):
        raise ValueError(f"oneDNN kernels need a CPU with mkldnn and float32/bfloat16, not {device}/{dtype}")
    return choice


class AddmmLinear:
    """GPT-2's Conv1D as Hugging Face computes it: bias + x @ weight[in, out]."""

    def __init__(self, weight_in_out: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight, self.bias = weight_in_out, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight)


class ThenActivation:
    """A linear layer followed by an activation, as two kernels."""

    def __init__(self, linear: Linear, activation) -> None:
        self.linear, self.activation = linear, activation

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))


# The decode copy. oneDNN's packed layout serves a step of a few rows worse
# than a plain [out, in] matrix serves it: a product with one row is a
# matrix-vector product, bound by how fast the weights stream from memory,
# and MKL's row-major dot products stream faster than oneDNN's 64-wide panels.
# Measured on an Intel Xeon with AMX, 2 threads, float32, the four matrices
# of 12 gpt2-xl blocks (1.47 GB from DRAM): plain 53.6/58.0/60.3 ms at
# 1/2/3 rows against packed 64.9/71.0/71.5 (27.4 against 22.6 GB/s at one
# row); at gpt2's 768 wide 4.4 against 6.7 ms at one row. From four rows on,
# MKL is 1.1-1.8x slower than the packed layout, so a node may hold both and
# pick by the step's rows. In bfloat16 the packed kernels (AMX) were faster at
# every row count, so the copy is float32 only.
DECODE_COPY_MAX_ROWS = 3
DECODE_COPY_DTYPES = (torch.float32,)


class OneDNNLinear:
    """x @ W + b with W reordered once into oneDNN's blocked layout, and
    optionally the tanh-approximated GELU fused into the same kernel.

    With `decode_copy`, the plain [out, in] matrix is kept too and serves steps
    of at most DECODE_COPY_MAX_ROWS rows (see above): twice the weight memory."""

    def __init__(
        self, weight_in_out: torch.Tensor, bias: torch.Tensor | None, gelu_tanh: bool = False, decode_copy: bool = False
    ) -> None:
        # oneDNN takes [out, in]; the reorder copies, so without the decode copy the plain weight is dropped.
        plain = weight_in_out.t().contiguous()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(plain, None)
        self.plain = plain if decode_copy else None
        self.bias = bias
        self.gelu_tanh = gelu_tanh
        self.post_op, self.algorithm = ("gelu", "tanh") if gelu_tanh else ("none", "")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain is not None and x.shape[0] <= DECODE_COPY_MAX_ROWS:
            y = F.linear(x, self.plain, self.bias)
            return F.gelu(y, approximate="tanh") if self.gelu_tanh else y
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.post_op, [], self.algorithm)


def decode_copy_helps(kernels: str, dtype: torch.dtype) -> bool:
    """Whether a decode copy can make this partition's small steps faster."""
    return kernels == "onednn" and dtype in DECODE_COPY_DTYPES


# GPT-2's "gelu_new" is 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))): oneDNN's
# gelu_tanh. Fused, it saves the seven elementwise passes of the Python formula
# over the [rows, 4d] activations (1.43 -> 1.00 ms at 16 rows on one thread).
FUSABLE_GELU = {"gelu_new", "gelu_pytorch_tanh"}


def make_linear(kernels: str, weight_in_out: torch.Tensor, bias: torch.Tensor, decode_copy: bool = False) -> Linear:
    if kernels == "onednn":
        return OneDNNLinear(weight_in_out, bias, decode_copy=decode_copy)
    return AddmmLinear(weight_in_out, bias)


def make_linear_with_activation(
    kernels: str, weight_in_out: torch.Tensor, bias: torch.Tensor, activation: str, decode_copy: bool = False
) -> Linear:
    """The MLP's first layer and its activation: one fused kernel where oneDNN can."""
    if kernels == "onednn" and activation in FUSABLE_GELU:
        return OneDNNLinear(weight_in_out, bias, gelu_tanh=True, decode_copy=decode_copy)
    return ThenActivation(make_linear(kernels, weight_in_out, bias, decode_copy), ACT2FN[activation])


def pack_head_weight(kernels: str, head_out_in: torch.Tensor) -> torch.Tensor:
    """The head reordered once for oneDNN, where it runs (else returned as it is).

    Packed, the head is 1.4-1.5x faster at 8-32 rows than read plain (at 16
    rows on one thread 15.8 ms against 23.4 ms): about a tenth of a whole
    decode step. The packed copy is the node's own memory; the tied plain
    matrix it came from stays a view of the checkpoint's file mapping, from
    which the embedding reads only the rows of the tokens it looks up.
    """
    if kernels != "onednn":
        return head_out_in
    return torch.ops.mkldnn._reorder_linear_weight(head_out_in.contiguous(), None)


def head_product(kernels: str, hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """hidden [B, d] @ head[vocab, d]^T, the head plain or packed by pack_head_weight.

    oneDNN reads even the plain [vocab, d] layout 1.3-1.6x faster than
    `addmm`: 23 ms instead of 37 ms at 16 rows on one thread.
    """
    if kernels == "onednn":
        return torch.ops.mkldnn._linear_pointwise(hidden, head, None, "none", [], "")
    return hidden @ head.T
