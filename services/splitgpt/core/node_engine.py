"""What a partition node does, without the transport: embed, step, release.

The servicer turns protobuf into these calls; everything here is synchronous
torch work that the shell runs on its own worker thread, never on the event loop.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

import torch

from .gpt2_partition import GPT2Partition
from .kv_cache import KVCacheStore
from .sampling import SamplingSpec, sample


@dataclass(frozen=True)
class StepInput:
    session_id: str
    position: int
    hidden: torch.Tensor  # [len, d]
    sampling: SamplingSpec = SamplingSpec()


@dataclass(frozen=True)
class StepOutput:
    session_id: str
    hidden: torch.Tensor | None = None  # not last: [len, d]
    token_id: int = 0  # last: the sampled token ...
    logprob: float = 0.0
    next_input: torch.Tensor | None = None  # ... and its embedding at the next position, [1, d]


class StepInputError(ValueError):
    pass


class NodeEngine:
    def __init__(self, partition: GPT2Partition, kv_max_tokens: int, kv_ttl_s: float) -> None:
        self.partition = partition
        self.cache = KVCacheStore(
            n_layers=partition.n_local_layers,
            n_heads=partition.n_heads,
            head_dim=partition.head_dim,
            dtype=partition.dtype,
            device=partition.device,
            max_tokens=kv_max_tokens,
            ttl_s=kv_ttl_s,
        )

    @property
    def is_last(self) -> bool:
        return self.partition.holds_head

    def embed(self, items: list[tuple[list[int], int]]) -> list[torch.Tensor]:
        vocab, n_ctx = self.partition.config.vocab_size, self.partition.config.n_positions
        for token_ids, position in items:
            if not token_ids:
                raise StepInputError("embed needs at least one token id")
            bad = [t for t in token_ids if not 0 <= t < vocab]
            if bad:
                raise StepInputError(f"token ids {bad[:5]} outside the vocabulary [0, {vocab})")
            if position + len(token_ids) > n_ctx:
                raise StepInputError(f"positions up to {position + len(token_ids)} exceed the context of {n_ctx}")
        return [self.partition.embed(ids, pos) for ids, pos in items]

    def step(self, inputs: list[StepInput]) -> list[StepOutput]:
        """One step for a batch; all-or-nothing on the caches of its sessions."""
        if not inputs:
            return []
        self._validate(inputs)
        sessions = self.cache.prepare([(x.session_id, x.position, x.hidden.shape[0]) for x in inputs])
        try:
            outputs = self.partition.forward([x.hidden for x in inputs], sessions)
        except BaseException:
            # Partly written caches must not be trusted: the coordinator replays them.
            self.cache.drop(x.session_id for x in inputs)
            raise
        for session, x in zip(sessions, inputs, strict=True):
            session.commit(x.hidden.shape[0])
        if not self.is_last:
            return [StepOutput(x.session_id, hidden=h) for x, h in zip(inputs, outputs, strict=True)]
        return self._sample(inputs, outputs)

    def _sample(self, inputs: list[StepInput], outputs: list[torch.Tensor]) -> list[StepOutput]:
        logits = self.partition.logits(torch.cat([h[-1:] for h in outputs]))
        next_positions = [x.position + x.hidden.shape[0] for x in inputs]
        tokens, logprobs = sample(logits, [x.sampling for x in inputs], next_positions)
        n_ctx = self.partition.config.n_positions
        results = []
        for x, tok, lp, pos in zip(inputs, tokens, logprobs, next_positions, strict=True):
            # The embedding of the token just chosen is the next step's input;
            # at the end of the context there is no next step.
            nxt = self.partition.embed([tok], pos) if pos < n_ctx else None
            results.append(StepOutput(x.session_id, token_id=tok, logprob=lp, next_input=nxt))
        return results

    def _validate(self, inputs: list[StepInput]) -> None:
        d, n_ctx = self.partition.hidden_size, self.partition.config.n_positions
        seen = set()
        for x in inputs:
            if x.session_id in seen:
                raise StepInputError(f"session {x.session_id!r} appears twice in one step")
            seen.add(x.session_id)
            if x.hidden.dim() != 2 or x.hidden.shape[1] != d or x.hidden.shape[0] == 0:
                raise StepInputError(f"session {x.session_id!r}: hidden must be [len>0, {d}], got {list(x.hidden.shape)}")
            if x.position + x.hidden.shape[0] > n_ctx:
                raise StepInputError(f"session {x.session_id!r}: positions beyond the context of {n_ctx}")

    def warm_up(self) -> None:
        """One throwaway step: touches every weight page (safetensors maps them
        lazily) and the allocator, so the first request is not the slow one."""
        p = self.partition
        hidden = p.embed([0], 0) if self.is_last else torch.zeros(1, p.hidden_size, dtype=p.dtype, device=p.device)
        self.step([StepInput("__warm_up__", 0, hidden)])
        self.release(["__warm_up__"])

    def release(self, session_ids: list[str]) -> int:
        return self.cache.drop(session_ids)


def resident_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best there is (KiB on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
