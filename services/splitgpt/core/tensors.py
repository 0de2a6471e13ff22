"""Tensors to raw bytes and back, the wire form of hidden states."""

from __future__ import annotations

import math
import warnings

import torch

from .node_contract import StepInputError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Hidden states are [rows, d]; nothing on the wire has more dimensions than this,
# nor (even in an empty tensor, whose other sizes are free) more elements.
MAX_DIMS = 4
MAX_ELEMENTS = 2**40
# frombuffer warns that bytes are read-only: callers that might write ask for a
# copy. Filtered once here, not per call: `warnings.catch_warnings` around each
# decode was a tenth of a tiny relayed step's Python time.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


class TensorFormatError(StepInputError):
    """Bytes that are not the tensor their dtype and shape say: a malformed step."""


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise TensorFormatError(f"unsupported dtype {name!r}; use one of {sorted(DTYPES)}") from None


def encode(t: torch.Tensor) -> tuple[bytes, str, list[int]]:
    t = t.detach().contiguous().cpu()
    # Through uint8 so bfloat16, which numpy lacks, takes the same path.
    return t.view(torch.uint8).numpy().tobytes(), DTYPE_NAMES[t.dtype], list(t.shape)


def decode(data: bytes, dtype: str, shape: list[int], copy: bool = True) -> torch.Tensor:
    """Bytes -> tensor. `copy=False` returns a view over `data`: no copy, but
    the tensor must then never be written in place."""
    torch_dtype = dtype_from_name(dtype)
    if len(shape) > MAX_DIMS or any(n < 0 for n in shape) or math.prod(n for n in shape if n) > MAX_ELEMENTS:
        raise TensorFormatError(
            f"tensor shape {list(shape)[: MAX_DIMS + 1]} is not a shape: at most {MAX_DIMS} sizes, "
            f"none negative, at most {MAX_ELEMENTS} elements"
        )
    itemsize = torch_dtype.itemsize
    expected = math.prod(shape) * itemsize  # a Python int: no overflow, so a huge shape cannot match
    if len(data) != expected:
        raise TensorFormatError(f"tensor of shape {list(shape)} {dtype} needs {expected} bytes, got {len(data)}")
    if expected == 0:
        return torch.empty(shape, dtype=torch_dtype)
    view = torch.frombuffer(data, dtype=torch_dtype).reshape(shape)
    return view.clone() if copy else view
