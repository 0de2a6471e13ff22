"""Prefix reuse across requests: which K/V a prompt can take from earlier requests.

A prompt is cut into full blocks of BLOCK_TOKENS tokens, each named by a hash of
its tokens chained with the hash of the block before it (vLLM's automatic
prefix caching), so one hash names a block's whole prefix and equal hashes mean
equal histories. Nodes keep a copy of every prompt block they computed, under
its hash, in their KV budget (core.kv_cache.PrefixBlocks); a later sequence
whose prompt starts with those blocks starts its session from them and
computes only the rest.

The coordinator decides how many blocks a sequence reuses from `PrefixIndex`,
its record of which blocks it had each node store. A node may have evicted a
block since: it then refuses the step (a CacheMiss), the coordinator forgets
what it believed of that node, and the sequence is prefilled in full.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence

# vLLM's default block size: small enough that a prompt reuses all but a few
# tokens of a shared prefix, large enough that hashing and copying stay cheap.
BLOCK_TOKENS = 16
HASH_BYTES = 16


def block_hashes(token_ids: Sequence[int]) -> list[bytes]:
    """The chained hashes of the full blocks of `token_ids`, in order."""
    hashes, previous = [], b""
    for start in range(0, len(token_ids) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
        block = token_ids[start : start + BLOCK_TOKENS]
        digest = hashlib.blake2b(previous, digest_size=HASH_BYTES)
        digest.update(b"".join(t.to_bytes(4, "little") for t in block))
        previous = digest.digest()
        hashes.append(previous)
    return hashes


def reusable_blocks(prompt_tokens: int) -> int:
    """Blocks a prompt may take from the cache: every full one, save that at
    least one token is computed, for its logits to give the first new token."""
    return (prompt_tokens - 1) // BLOCK_TOKENS


class PrefixIndex:
    """The blocks the coordinator had each node store, least recently used first.

    Bounded per node (`max_blocks`): it is a belief, not the node's state, and a
    node's own LRU decides what it keeps; a wrong belief costs one refused step.
    """

    def __init__(self, max_blocks: int = 1 << 16) -> None:
        self.max_blocks = max_blocks
        self._held: dict[str, OrderedDict[bytes, None]] = {}

    def stored(self, node_id: str, hashes: Iterable[bytes]) -> None:
        held = self._held.setdefault(node_id, OrderedDict())
        for h in hashes:
            held[h] = None
            held.move_to_end(h)
        while len(held) > self.max_blocks:
            held.popitem(last=False)

    def forget(self, node_id: str) -> None:
        self._held.pop(node_id, None)

    def common_prefix(self, node_ids: Sequence[str], hashes: Sequence[bytes]) -> int:
        """How many leading blocks of `hashes` every node of the chain holds."""
        helds = [self._held.get(n) for n in node_ids]
        if not hashes or any(h is None for h in helds):
            return 0
        n = 0
        for h in hashes:
            if not all(h in held for held in helds):
                break
            n += 1
        for held in helds:  # used: the most recent of each node's entries
            for h in hashes[:n]:
                held.move_to_end(h)
        return n
