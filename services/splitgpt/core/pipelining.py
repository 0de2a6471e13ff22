"""How many micro-batches a coordinator keeps in flight when every node shares one host's cores.

Pipelining (one lane per core, each node of a busy lane on one core) overlaps one node's
compute with the others' hops and Python, which pays while a step is short: the weights
sit in the CPU's cache and the per-step overhead is most of the time. A node whose weights
overflow the last-level cache streams them from DRAM at every step instead, and then every
lane reads them once more per token: two lanes of 4 rows cost about twice one lane of 8
rows computed on all the cores. Measured with gpt2-xl over 4 nodes on one 2-vCPU host
(AMD EPYC, 32 MiB L3, float32, 8 concurrent requests): one micro-batch gave 2.32-2.45x the
tokens/s of one Hugging Face process's batch of 8; two gave 0.98x (README, *A model no node
holds*).
"""

from __future__ import annotations


def overflows_cache(weight_bytes: int, cache_bytes: int | None) -> bool:
    """Whether a node's weights stream from memory at every step: more than the last-level
    cache (`cache_bytes`; None, not known: more than 64 MiB)."""
    return weight_bytes > (cache_bytes if cache_bytes else 64 * 2**20)


def shared_host_micro_batches(partitions: int, cores: int, largest_node_weight_bytes: int, cache_bytes: int | None) -> int:
    """One when the largest node's weights overflow the last-level cache; else one per core,
    at most one per partition."""
    if overflows_cache(largest_node_weight_bytes, cache_bytes):
        return 1
    return max(1, min(partitions, cores))
