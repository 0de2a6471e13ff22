"""bfloat16 nodes (`splitgpt up --dtype bfloat16`): what they agree on, and that batching changes nothing.

float32 nodes give Hugging Face's greedy tokens exactly (tests/core/test_partition_equivalence.py).
bfloat16 rounds every weight, activation and logit to 8 significant bits, and this stack
rounds them in another kernel order than Hugging Face's bfloat16 model does, so the two
cannot be bit-identical. What holds, measured on the tiny checkpoint (4 blocks, d=64, the
conftest's) over 30 prompts x 32 greedy tokens:

- 16 of the 30 continuations are token for token Hugging Face's bfloat16 ones (Hugging
  Face's own bfloat16 matches its float32 on 15 of 30: the tiny random model is full of
  near-ties); 708 of the 960 tokens come before the first difference. Fed the same context
  at every position (teacher forcing), the two pick the same token 942 times in 960.
- Every difference starts at a near-tie. At the first differing position the context is
  the same, and the two tokens' logits are within 4 bfloat16 rounding steps of each other,
  both in the exact float32 model (at most 3.1 steps measured) and in Hugging Face's
  bfloat16 logits (at most 3 steps, most often an exact tie that its argmax breaks towards
  the lower token id). A bfloat16 logit is within 3 steps of the float32 one (measured
  over the top 10 of 960 positions: median 1.1, max 2.9), so two logits 6 steps apart can
  swap places; TIE_STEPS allows 8.
- The stack itself adds nothing: its tokens are the in-process bfloat16 partitions' tokens
  exactly (the hidden states travel between nodes as raw bfloat16 bytes).

Batch size: on this checkpoint a sequence's bfloat16 tokens are the same alone and among 32
(in one packed step, prefill included: the hidden states are bit-identical, as in float32).
That does NOT hold at GPT-2-small width (d=768): there oneDNN's bfloat16 matrix products
round a row the same way in calls of 1 to 32 rows but differently above 32 rows (a packed
prefill, or a decode step of more than 32 sequences), and greedy tokens flip at near-ties:
18 of 32 sequences of a GPT-2-small-shaped random checkpoint changed within 16 tokens, alone
against 32 concurrent through the stack (float32: 0 of 32). See the README, bf16.
"""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest
import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

from splitgpt.bench.local_stack import Stack
from splitgpt.core.gpt2_partition import GPT2Partition
from splitgpt.core.node_contract import SequenceStep, StepBatch
from splitgpt.core.node_engine import NodeEngine
from splitgpt.core.partitioning import even_split
from tests.metrics_text import scrape
from tests.servers import running

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, my name is",
    "Once upon a time",
    "The meaning of life is",
    "def fibonacci(n):",
    "Water boils at",
    "import numpy as np",
    "The first rule of",
    "Why is the sky blue?",
    "It was a dark and stormy night",
]
NEW_TOKENS = 24
# Two tokens whose logits are this many bfloat16 rounding steps apart or fewer are a near-tie
# that bfloat16 cannot order reliably (see the module's docstring for the measured figures).
TIE_STEPS = 8
N_LAYER = 4  # the tiny checkpoint's blocks


def bf16_step(x: float) -> float:
    """bfloat16's rounding step (one unit in the last place) at magnitude |x|: 8 significant bits."""
    return 2.0 ** (math.floor(math.log2(abs(x))) - 7)


# --- Hugging Face --------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_checkpoint):
    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def hf_bf16(tiny_checkpoint) -> GPT2LMHeadModel:
    return GPT2LMHeadModel.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16).eval()


def hf_greedy(model: GPT2LMHeadModel, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens past end-of-text (as `ignore_eos`), and the logits each was chosen from."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=50256,
            eos_token_id=None, output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
    return out.sequences[0, len(prompt) :].tolist(), [s[0].float() for s in out.scores]


def hf_logits_after(model: GPT2LMHeadModel, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1].float()


def assert_near_tie(ours: int, theirs: int, exact: torch.Tensor, hf_bf16_logits: torch.Tensor, where: str) -> None:
    """`ours` and `theirs` differ only by bfloat16 rounding: the exact (float32) model, and
    Hugging Face's bfloat16 logits it chose `theirs` from, rank them within TIE_STEPS."""
    step = bf16_step(float(exact.max()))
    exact_margin = abs(float(exact[theirs] - exact[ours])) / step
    hf_margin = float(hf_bf16_logits[theirs] - hf_bf16_logits[ours]) / step
    assert exact_margin <= TIE_STEPS and hf_margin <= TIE_STEPS, (
        f"{where}: token {ours} against Hugging Face's {theirs} is no near-tie: float32 logits "
        f"{exact_margin:.2f} bfloat16 steps apart, Hugging Face's bfloat16 {hf_margin:.2f} (at most {TIE_STEPS})"
    )


# --- the partitions in this process, as the nodes run them ---------------------


def node_chain(checkpoint, dtype: torch.dtype, parts: int = 3) -> list[NodeEngine]:
    """The nodes' engines for an even split (what `splitgpt up --split even` serves)."""
    return [
        NodeEngine(
            GPT2Partition.from_checkpoint(checkpoint, s, e, holds_head=i == parts - 1, dtype=dtype, pack_head=True),
            kv_max_tokens=1 << 16,
            kv_ttl_s=600,
        )
        for i, (s, e) in enumerate(even_split(N_LAYER, parts))
    ]


def generate(chain: list[NodeEngine], prompts: dict[str, list[int]], n: int) -> dict[str, list[int]]:
    """Greedy, every sequence of `prompts` in every step (their prefills packed into one), as the
    coordinator batches running requests; the last node embeds and samples."""
    last = chain[-1]
    ids = list(prompts)
    hidden = torch.cat(last.embed([(prompts[s], 0) for s in ids]))
    steps = [SequenceStep(s, 0, len(prompts[s])) for s in ids]
    out: dict[str, list[int]] = {s: [] for s in ids}
    for _ in range(n):
        h = hidden
        for engine in chain:
            result = engine.step(StepBatch(steps, h))
            h = result.hidden
        for s, token in zip(ids, result.token_ids, strict=True):
            out[s].append(token)
        hidden = result.next_input
        steps = [SequenceStep(s.session_id, s.position + s.length, 1) for s in steps]
    for engine in chain:
        engine.release(ids)
    return out


def random_prompts(count: int, seed: int = 0) -> dict[str, list[int]]:
    """Prompts of 1 to 40 tokens: packed together their prefill is hundreds of rows."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 41, (count,), generator=g).tolist()
    return {f"s{i}": torch.randint(0, 50257, (n,), generator=g).tolist() for i, n in enumerate(lengths)}


# --- in process (fast) --------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_a_batch_of_32_gives_each_sequence_what_it_gets_alone(tiny_checkpoint, dtype):
    """NodeEngine x 3: 32 sequences prefilled in one packed step and decoded 32 rows a step
    give the tokens each gives alone (batch of 1), in bfloat16 as in float32."""
    chain = node_chain(tiny_checkpoint, dtype)
    prompts = random_prompts(32)
    alone = {}
    for sid, prompt in prompts.items():
        alone |= generate(chain, {sid: prompt}, 12)
    together = generate(chain, prompts, 12)
    changed = [sid for sid in prompts if together[sid] != alone[sid]]
    assert not changed, f"{len(changed)} of 32 sequences changed with the batch: {changed}"


def test_bf16_partitions_pick_hf_bf16s_token_at_every_position_but_near_ties(tiny_checkpoint, hf_model, hf_bf16, hf_tokenizer):
    """Teacher-forced: fed Hugging Face's bfloat16 greedy continuation, the bfloat16 partitions
    choose its next token at every position, except where the two are a near-tie."""
    chain = node_chain(tiny_checkpoint, torch.bfloat16)
    last = chain[-1]
    same = total = 0
    for text in PROMPTS:
        prompt = hf_tokenizer(text)["input_ids"]
        theirs, their_logits = hf_greedy(hf_bf16, prompt, NEW_TOKENS)
        steps, hidden = [SequenceStep("tf", 0, len(prompt))], torch.cat(last.embed([(prompt, 0)]))
        for i, token in enumerate(theirs):
            h = hidden
            for engine in chain:
                result = engine.step(StepBatch(steps, h))
                h = result.hidden
            (ours,) = result.token_ids
            total += 1
            if ours == token:
                same += 1
            else:
                context = prompt + theirs[:i]
                assert_near_tie(ours, token, hf_logits_after(hf_model, context), their_logits[i], f"{text!r} token {i}")
            steps = [SequenceStep("tf", steps[0].position + steps[0].length, 1)]
            hidden = torch.cat(last.embed([([token], steps[0].position)]))
        for engine in chain:
            engine.release(["tf"])
    assert same > total // 2, f"only {same} of {total} positions agree"


# --- through the stack --------------------------------------------------------


@pytest.fixture(scope="module")
def bf16_stack(tiny_checkpoint, tmp_path_factory):
    """`splitgpt up --dtype bfloat16`: tokenizer, 3 bfloat16 nodes, coordinator, API."""
    with running(
        Stack(tiny_checkpoint, tmp_path_factory.mktemp("bf16-stack"), partitions=3, extra_args=["--dtype", "bfloat16"])
    ) as s:
        yield s


def body(text: str, n: int) -> dict:
    # cache: false, or the second run of a prompt would be the first one's stored result
    return {"text": text, "max_tokens": n, "ignore_eos": True, "cache": False}


def stream_ids(client: httpx.Client, text: str, n: int) -> tuple[list[int], str]:
    """The greedy token ids of /api/model/stream, and the text of its `done` event."""
    ids, done, event = [], None, None
    with client.stream("POST", "/api/model/stream", json=body(text, n)) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("token", "done"):
                data = json.loads(line.split(":", 1)[1])
                if event == "done":
                    done = data["generated_text"]
                elif data["token_id"] >= 0:
                    ids.append(data["token_id"])
    assert done is not None
    return ids, done


async def node_infos(stack: Stack) -> list:
    from splitgpt.rpc import node_pb2, node_pb2_grpc
    from splitgpt.shells.grpc_runtime import client_channel

    infos = []
    for p in range(stack.partitions):
        async with client_channel(stack.node_address(p), stack.security()) as channel:
            infos.append(await node_pb2_grpc.PartitionNodeStub(channel).Info(node_pb2.NodeInfoRequest(), timeout=10))
    return infos


@pytest.mark.system
def test_bf16_stack_gives_hf_bf16s_greedy_tokens_up_to_near_ties(bf16_stack, tiny_checkpoint, hf_model, hf_bf16, hf_tokenizer):
    """Through POST /api/model/process: each prompt's greedy tokens are Hugging Face's bfloat16
    model's up to the first position where the two tokens are a near-tie (often to the end),
    and exactly the in-process bfloat16 partitions' tokens."""
    for info in asyncio.run(node_infos(bf16_stack)):
        assert info.dtype == "bfloat16" and info.parameter_bytes == 2 * info.parameter_count, info
        assert not info.decode_copy and info.weight_bytes == info.parameter_bytes, info  # AMX packed beats plain in bf16
    chain = node_chain(tiny_checkpoint, torch.bfloat16)
    with httpx.Client(base_url=bf16_stack.url, timeout=120) as client:
        for text in PROMPTS:
            r = client.post("/api/model/process", json=body(text, NEW_TOKENS))
            assert r.status_code == 200, r.text
            ids, streamed = stream_ids(client, text, NEW_TOKENS)
            assert streamed == r.json()["generated_text"] and len(ids) == NEW_TOKENS
            prompt = hf_tokenizer(text)["input_ids"]
            assert ids == generate(chain, {"s": prompt}, NEW_TOKENS)["s"], f"{text!r}: the stack is not its partitions"
            theirs, their_logits = hf_greedy(hf_bf16, prompt, NEW_TOKENS)
            if ids == theirs:
                continue
            i = next(k for k, (a, b) in enumerate(zip(ids, theirs, strict=True)) if a != b)
            exact_logits = hf_logits_after(hf_model, prompt + theirs[:i])  # the context both saw
            assert_near_tie(ids[i], theirs[i], exact_logits, their_logits[i], f"{text!r} token {i}")


def sequence_steps_over(stack: Stack, rows: int) -> int:
    """Steps the last node ran with more than `rows` sequences (its histogram)."""
    s = scrape(stack.node_metrics_url(stack.partitions - 1))
    buckets = {float(labels["le"]): value for name, labels, value in s.samples if name == "splitgpt_node_step_sequences_bucket"}
    return int(buckets[math.inf] - max(v for le, v in buckets.items() if le <= rows))


@pytest.mark.system
def test_bf16_greedy_output_is_the_same_alone_and_32_at_once(bf16_stack):
    """32 prompts, one at a time and then all 32 concurrently (batched by the coordinator into
    steps of many sequences): every greedy text is the same."""
    words = "the cat sat on a mat and then it slept for ten long hours in the warm sun".split() * 3
    prompts = [" ".join(words[i % 17 : i % 17 + 1 + (i * 7) % 30]) for i in range(32)]  # 1 to 30 words, all different
    n = 16
    with httpx.Client(base_url=bf16_stack.url, timeout=120) as client:
        alone = []
        for text in prompts:
            r = client.post("/api/model/process", json=body(text, n))
            assert r.status_code == 200, r.text
            alone.append(r.json()["generated_text"])
    batched_before = sequence_steps_over(bf16_stack, 4)

    async def all_at_once() -> list[str]:
        async with httpx.AsyncClient(base_url=bf16_stack.url, timeout=120) as client:
            responses = await asyncio.gather(*(client.post("/api/model/process", json=body(t, n)) for t in prompts))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        return [r.json()["generated_text"] for r in responses]

    together = asyncio.run(all_at_once())
    assert sequence_steps_over(bf16_stack, 4) > batched_before, "the 32 requests were never batched"
    changed = [(p, a, t) for p, a, t in zip(prompts, alone, together, strict=True) if a != t]
    assert not changed, f"{len(changed)} of 32 greedy texts changed with the batch: {changed[:3]}"
