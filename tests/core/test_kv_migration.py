"""Live migration of one session between replicas of a partition: export, import, continue exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from splitgpt.core.gpt2_partition import GPT2Partition
from splitgpt.core.kv_cache import KVCacheStore, SessionSnapshot
from splitgpt.core.node_contract import CacheMiss, SequenceStep, StepBatch, StepInputError, StepResult, WrongPartition
from splitgpt.core.node_engine import MAX_SESSION_ID_CHARS, NodeEngine
from splitgpt.core.partitioning import even_split

PROMPT = [15496, 11, 616, 1438, 318, 257, 1643]
N_CTX = 128  # the tiny checkpoint's


def chain(checkpoint, kv_max_tokens: int = 4096) -> list[NodeEngine]:
    """One replica of each partition of a 3-way split: first, middle and last."""
    ranges = even_split(4, 3)
    return [
        NodeEngine(GPT2Partition.from_checkpoint(checkpoint, s, e, i == len(ranges) - 1), kv_max_tokens, kv_ttl_s=600)
        for i, (s, e) in enumerate(ranges)
    ]


def step(engine: NodeEngine, session_id: str, position: int, hidden: torch.Tensor) -> StepResult:
    return engine.step(StepBatch([SequenceStep(session_id, position, hidden.shape[0])], hidden))


def through(engines: list[NodeEngine], session_id: str, position: int, hidden: torch.Tensor):
    """One step through the whole chain: each partition's input rows, and the last's result."""
    inputs = []
    for engine in engines:
        inputs.append(hidden)
        result = step(engine, session_id, position, hidden)
        hidden = result.hidden
    return inputs, result


def generate(engines: list[NodeEngine], session_id: str, decode_steps: int) -> tuple[int, torch.Tensor]:
    """A prefill and some greedy decode steps: the next position, and the next step's input."""
    _, result = through(engines, session_id, 0, engines[-1].embed([(PROMPT, 0)])[0])
    for position in range(len(PROMPT), len(PROMPT) + decode_steps):
        _, result = through(engines, session_id, position, result.next_input)
    return len(PROMPT) + decode_steps, result.next_input


@pytest.fixture
def replicas(tiny_checkpoint) -> tuple[list[NodeEngine], list[NodeEngine]]:
    return chain(tiny_checkpoint), chain(tiny_checkpoint)


@pytest.mark.parametrize("k", [0, 1, 2], ids=["first", "middle", "last"])
def test_an_imported_session_continues_bit_for_bit_as_on_its_source(replicas, k):
    a, b = replicas
    position, hidden = generate(a, "s", decode_steps=3)
    snapshot = a[k].export_session("s")
    assert snapshot.length == position
    assert b[k].import_session("s", snapshot) == position
    assert b[k].cache.length("s") == position
    for _ in range(4):  # B's partition k gets what A's got; it answers the same, to the bit
        inputs, result_a = through(a, "s", position, hidden)
        result_b = step(b[k], "s", position, inputs[k])
        if k < 2:
            assert torch.equal(result_b.hidden, inputs[k + 1])
        else:
            assert result_b.token_ids == result_a.token_ids and result_b.logprobs == result_a.logprobs
            assert torch.equal(result_b.next_input, result_a.next_input)
        position, hidden = position + 1, result_a.next_input
    if k < 2:  # the outputs came along: B can rebuild a replica of the next partition, as A could
        assert torch.equal(b[k].outputs("s", 0, position), a[k].outputs("s", 0, position))
    else:
        with pytest.raises(WrongPartition):
            b[k].outputs("s", 0, position)


def test_a_rewound_source_with_a_larger_buffer_migrates_exactly_too(replicas):
    """The source's buffers grew to 128 positions, then a rewind left it 61: the import
    holds them in 64, and the steps after it (growing past 64 again) still match."""
    a, b = replicas
    ids = [(7 * i + 3) % 50257 for i in range(70)]
    through(a, "s", 0, a[-1].embed([(ids, 0)])[0])
    _, result = through(a, "s", 60, a[-1].embed([(ids[60:61], 60)])[0])
    for source, target in zip(a, b, strict=True):
        target.import_session("s", source.export_session("s"))
    hidden = result.next_input
    for position in range(61, 70):
        inputs, result_a = through(a, "s", position, hidden)
        _, result_b = through(b, "s", position, inputs[0])
        assert result_b.token_ids == result_a.token_ids and torch.equal(result_b.next_input, result_a.next_input)
        hidden = result_a.next_input


def test_an_export_is_a_copy_that_later_steps_at_the_source_do_not_change(replicas):
    a, _ = replicas
    position, _ = generate(a, "s", decode_steps=2)
    snapshot = a[1].export_session("s")
    kept = [t.clone() for t in snapshot.kv], snapshot.outputs.clone()
    step(a[1], "s", 2, torch.randn(3, 64))  # a rewind that overwrites positions the export holds
    assert all(torch.equal(t, c) for t, c in zip(snapshot.kv, kept[0], strict=True))
    assert torch.equal(snapshot.outputs, kept[1])
    assert [tuple(t.shape) for t in snapshot.kv] == [(2, 4, position, 16)]  # 1 block, 4 heads of 16


def test_an_import_replaces_a_session_of_that_id(replicas):
    a, b = replicas
    position, _ = generate(a, "s", decode_steps=1)
    generate(b, "s", decode_steps=20)
    b[0].import_session("s", a[0].export_session("s"))
    assert b[0].cache.length("s") == position
    assert torch.equal(b[0].outputs("s", 0, position), a[0].outputs("s", 0, position))


def test_exporting_a_session_not_held_is_a_cache_miss(replicas):
    a, _ = replicas
    with pytest.raises(CacheMiss) as err:
        a[0].export_session("nobody")
    assert "nobody" in err.value.misses and a[0].cache.misses == 1
    with pytest.raises(StepInputError, match="session id"):
        a[0].export_session("x" * (MAX_SESSION_ID_CHARS + 1))


def _zeros_like(snapshot: SessionSnapshot, length: int) -> SessionSnapshot:
    """A well-formed snapshot of `length` positions, shaped as `snapshot`."""
    kv = [torch.zeros(*t.shape[:2], length, t.shape[3]) for t in snapshot.kv]
    return SessionSnapshot(length, kv, torch.zeros(length, snapshot.outputs.shape[1]))


# (name, a change to a valid export of the middle partition, the message expected): each is refused.
HOSTILE_IMPORTS = {
    "a layer too few": (lambda s: dataclasses.replace(s, kv=[]), "K/V for 0 layers"),
    "a layer too many": (lambda s: dataclasses.replace(s, kv=s.kv * 2), "K/V for 2 layers"),
    "fewer heads": (lambda s: dataclasses.replace(s, kv=[s.kv[0][:, :3]]), r"must be \[2, 4, 9, 16\]"),
    "fewer positions than the length": (lambda s: dataclasses.replace(s, kv=[s.kv[0][:, :, :-1]]), "must be"),
    "a length beyond the tensors": (lambda s: dataclasses.replace(s, length=s.length + 1), "must be"),
    "keys without values": (lambda s: dataclasses.replace(s, kv=[s.kv[0][:1]]), "must be"),
    "not this node's dtype": (lambda s: dataclasses.replace(s, kv=[s.kv[0].double()]), "float32"),
    "outputs of another dtype": (lambda s: dataclasses.replace(s, outputs=s.outputs.bfloat16()), "float32"),
    "outputs of another width": (lambda s: dataclasses.replace(s, outputs=s.outputs[:, :-1]), r"outputs must be \[9, 64\]"),
    "no outputs where they are kept": (lambda s: dataclasses.replace(s, outputs=None), "keeps them"),
    "length 0": (lambda s: _zeros_like(s, 0), "at least 1"),
    "a length past the context": (lambda s: _zeros_like(s, N_CTX + 1), "context holds 128"),
    "a length past the KV budget": (lambda s: _zeros_like(s, 100), "KV budget"),
}


@pytest.mark.parametrize("change", HOSTILE_IMPORTS.values(), ids=HOSTILE_IMPORTS.keys())
def test_a_hostile_import_is_refused_and_changes_nothing(tiny_checkpoint, change):
    a, b = chain(tiny_checkpoint), chain(tiny_checkpoint, kv_max_tokens=64)
    generate(a, "s", decode_steps=2)
    generate(b, "s", decode_steps=0)
    generate(b, "other", decode_steps=5)
    before = {sid: b[1].export_session(sid) for sid in ("s", "other")}
    transform, message = change
    with pytest.raises(StepInputError, match=message):
        b[1].import_session("s", transform(a[1].export_session("s")))
    for sid, snapshot in before.items():
        after = b[1].export_session(sid)
        assert after.length == snapshot.length and torch.equal(after.kv[0], snapshot.kv[0])
    assert len(b[1].cache) == 2


def test_hostile_imports_into_the_last_partition_and_by_session_id(replicas):
    a, b = replicas
    generate(a, "s", decode_steps=1)
    snapshot = a[1].export_session("s")
    with pytest.raises(StepInputError, match="keeps none"):
        b[2].import_session("s", snapshot)  # the middle's outputs sent to the last partition
    with pytest.raises(StepInputError, match="session id"):
        b[1].import_session("x" * (MAX_SESSION_ID_CHARS + 1), snapshot)
    assert len(b[1].cache) == len(b[2].cache) == 0


# -- the store alone ---------------------------------------------------------


def store(max_tokens: int = 100, output_width: int = 0) -> KVCacheStore:
    return KVCacheStore(2, 2, 4, torch.float32, torch.device("cpu"), max_tokens, 60.0, output_width=output_width)


def fill(s: KVCacheStore, sid: str, n: int) -> None:
    (session,) = s.prepare([(sid, 0, n)])
    for layer in range(2):
        session.append(layer, torch.randn(2, 2, n, 4))
    session.keep_outputs(torch.randn(n, 8))
    session.commit(n)


def test_an_import_is_most_recent_and_others_make_room_for_it():
    source, target = store(), store(max_tokens=10)
    fill(source, "moving", 6)
    fill(target, "old", 4)
    fill(target, "newer", 4)
    assert target.import_session("moving", source.export("moving")) == 6
    assert "old" not in target and "newer" in target and target.evictions == 1
    assert list(target._sessions) == ["newer", "moving"]


def test_a_store_keeping_outputs_takes_them_along():
    source, target = store(output_width=8), store(output_width=8)
    fill(source, "s", 5)
    snapshot = source.export("s")
    assert snapshot.outputs.shape == (5, 8)
    target.import_session("s", snapshot)
    assert torch.equal(target.outputs("s", 0, 5), source.outputs("s", 0, 5))
    assert torch.equal(target.export("s").kv[1], snapshot.kv[1])


def test_replacing_a_session_leaves_the_prompt_blocks_it_lent_intact():
    source, target = store(max_tokens=200), store(max_tokens=200)
    fill(source, "s", 40)
    fill(target, "s", 40)
    (session,) = target.prepare([("s", 40, 1)])
    target.keep_prefix(session, [b"a" * 16, b"b" * 16])
    blocks = [b.kv[0].clone() for b in target._prefix.values()]
    target.import_session("s", source.export("s"))
    assert all(torch.equal(b.kv[0], kept) for b, kept in zip(target._prefix.values(), blocks, strict=True))
    assert torch.equal(target.export("s").kv[0], source.export("s").kv[0])
