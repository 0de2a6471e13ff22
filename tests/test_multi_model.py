"""Several models on one cluster, nodes that join, drain and move while it serves.

One real stack (`splitgpt up --model tiny --model second=...`): two checkpoints of
different geometries, three partitions each. In order, on the same stack:
both models greedy-identical to their own Hugging Face model through /api and
/v1; a node registered at run time (and one with the wrong blocks refused);
a replica drained under 16 streams with its sequences' K/V moved, not
recomputed; the default model rolled from 3 partitions to 4 under load.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

from splitgpt.bench.local_stack import Stack, free_port_base
from splitgpt.core.tiny_model import write_checkpoint
from tests.hf_reference import hf_text_of
from tests.metrics_text import scrape

pytestmark = pytest.mark.system  # starts real services as processes

FAST = {
    "SPLITGPT_COORDINATOR_HEALTH_INTERVAL_S": "0.3",
    "SPLITGPT_COORDINATOR_ROUTING": "least_loaded",
    "SPLITGPT_NODE_DRAIN_S": "0.5",
}
PROMPTS = ["The partitioned model answers", "Several models on one cluster", "A node joins while it serves"]


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory) -> Path:
    """Another geometry than the tiny model's: 6 blocks of width 96."""
    return write_checkpoint(tmp_path_factory.mktemp("second-gpt2"), n_layer=6, n_embd=96, n_head=4, n_positions=128, seed=7)


@pytest.fixture(scope="module")
def hf(tiny_checkpoint, second_checkpoint):
    tokenizer = GPT2TokenizerFast.from_pretrained(tiny_checkpoint)
    return tokenizer, {
        "tiny": GPT2LMHeadModel.from_pretrained(tiny_checkpoint).eval(),
        "second": GPT2LMHeadModel.from_pretrained(second_checkpoint).eval(),
    }


@pytest.fixture(scope="module")
def stack(tiny_checkpoint, second_checkpoint, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("multi-model-stack")
    stack = Stack(tiny_checkpoint, run_dir, partitions=3, env=FAST, more_models=[f"second={second_checkpoint}"])
    stack.extra_nodes: list[subprocess.Popen] = []
    try:
        stack.wait_ready()
        yield stack
    finally:
        for process in stack.extra_nodes:
            process.terminate()
        for process in stack.extra_nodes:
            process.wait(timeout=20)
        stack.stop()


def process(url: str, prompt: str, max_tokens: int, model: str | None = None, **extra) -> httpx.Response:
    body = {"text": prompt, "max_tokens": max_tokens, "cache": False, **extra}
    if model is not None:
        body["model"] = model
    return httpx.post(f"{url}/api/model/process", json=body, timeout=120)


def start_node(stack: Stack, node_id: str, model_dir: Path, partition: int, num_partitions: int, split: str = "even"):
    """A partition node outside the stack's plan, as an operator would start one: returns
    its process, address and metrics URL once it has loaded its weights."""
    port, metrics_port = free_port_base(1), free_port_base(1)
    env = {**os.environ, "MODEL_ID": str(model_dir), "HF_HUB_OFFLINE": "1", **stack.security_env()}
    log = open(stack.run_dir / f"{node_id}.log", "w")
    argv = [sys.executable, "-m", "splitgpt.cli", "node", "--node-id", node_id, "--partition", str(partition),
            "--num-partitions", str(num_partitions), "--split", split, "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", str(metrics_port), "--torch-threads", "1"]  # fmt: skip
    node = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    stack.extra_nodes.append(node)
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    deadline = time.monotonic() + 120
    while True:  # splitgpt_node_info appears once the weights are loaded
        assert node.poll() is None, (stack.run_dir / f"{node_id}.log").read_text()
        try:
            if "splitgpt_node_info" in httpx.get(metrics, timeout=2).text:
                return node, f"127.0.0.1:{port}", metrics
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{node_id} did not load"
        time.sleep(0.2)


def nodes(stack: Stack) -> dict[str, dict]:
    r = httpx.get(f"{stack.url}/api/nodes", timeout=10)
    assert r.status_code == 200, r.text
    return {n["id"]: n for n in r.json()["nodes"]}


def prefill_tokens(metrics_url: str) -> float:
    return scrape(metrics_url).value("splitgpt_node_tokens_processed_total", phase="prefill")


def test_two_models_each_greedy_identical_to_its_own_hf_model_through_api_and_v1(stack, hf, tiny_checkpoint):
    models = httpx.get(f"{stack.url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == [str(tiny_checkpoint), "second"]
    assert [len(m["splitgpt"]["partitions"]) for m in models] == [3, 3]
    listed = httpx.get(f"{stack.url}/api/models").json()["models"]
    assert [(m["name"], m["n_layer"], m["ready"]) for m in listed] == [(str(tiny_checkpoint), 4, True), ("second", 6, True)]
    for prompt in PROMPTS:
        tiny, second = hf_text_of(hf, "tiny", prompt, 20), hf_text_of(hf, "second", prompt, 20)
        assert tiny != second  # two different models: a mix-up cannot pass
        assert process(stack.url, prompt, 20).json()["generated_text"] == tiny
        answer = process(stack.url, prompt, 20, model="second").json()
        assert (answer["generated_text"], answer["model"]) == (second, "second")
        assert {t["node"] for t in answer["timings"]["partitions"]} == {f"m1-part{p}-r0" for p in range(3)}
        v1 = httpx.post(
            f"{stack.url}/v1/completions",
            json={"model": "second", "prompt": prompt, "max_tokens": 20, "temperature": 0},
            timeout=60,
        )
        assert (v1.json()["choices"][0]["text"], v1.json()["model"]) == (second, "second")
        chat_default = httpx.post(
            f"{stack.url}/v1/completions",
            json={"model": "tiny-gpt20", "prompt": prompt, "max_tokens": 20, "temperature": 0},
            timeout=60,
        )  # the default model also by its directory's name
        assert chat_default.json()["choices"][0]["text"] == tiny
    # The result cache keys on the model: the same request on the other model is no hit.
    first = process(stack.url, PROMPTS[0], 8, cache=True).json()
    other = process(stack.url, PROMPTS[0], 8, model="second", cache=True).json()
    assert not other["cached"] and other["generated_text"] != first["generated_text"]
    assert process(stack.url, PROMPTS[0], 8, model="second", cache=True).json()["cached"]
    missing = process(stack.url, PROMPTS[0], 8, model="no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "model_not_found", missing.text
    assert "second" in missing.json()["error"]["message"]
    v1_missing = httpx.post(f"{stack.url}/v1/completions", json={"model": "nope", "prompt": "x", "max_tokens": 2})
    assert v1_missing.status_code == 404 and v1_missing.json()["error"]["code"] == "model_not_found"


def test_a_node_registered_at_run_time_takes_requests_and_a_wrong_one_is_refused_by_name(stack, hf, second_checkpoint):
    _, address, _ = start_node(stack, "second-p1-extra", second_checkpoint, partition=1, num_partitions=3)
    _, wrong, _ = start_node(stack, "second-p1-wrong", second_checkpoint, partition=1, num_partitions=3, split="0-1,1-5,5-6")

    refused = httpx.post(f"{stack.url}/api/nodes", json={"id": "second-p1-wrong", "address": wrong, "model": "second"})
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]["message"]
    assert "second-p1-wrong" in message and "blocks [1, 5)" in message and "blocks [2, 4)" in message, message
    assert "second-p1-wrong" not in nodes(stack)

    added = httpx.post(f"{stack.url}/api/nodes", json={"id": "second-p1-extra", "address": address, "model": "second"})
    assert added.status_code == 201, added.text
    assert (added.json()["model"], added.json()["partition"], added.json()["status"]) == ("second", 1, "SERVING")
    again = httpx.post(f"{stack.url}/api/nodes", json={"id": "second-p1-extra", "address": address, "model": "second"})
    assert again.status_code == 409, again.text

    # With the configured replica cordoned, the model's requests go through the new node.
    assert httpx.post(f"{stack.url}/api/nodes/m1-part1-r0/cordon").json()["lifecycle"] == "cordoned"
    answer = process(stack.url, PROMPTS[1], 12, model="second").json()
    assert answer["generated_text"] == hf_text_of(hf, "second", PROMPTS[1], 12)
    assert "second-p1-extra" in {t["node"] for t in answer["timings"]["partitions"]}
    assert httpx.post(f"{stack.url}/api/nodes/m1-part1-r0/uncordon").json()["lifecycle"] == "online"
    listed = nodes(stack)["second-p1-extra"]
    assert listed["lifecycle"] == "online" and listed["kv_max_tokens"] > 0 and listed["resident_bytes"] > 0


def test_draining_a_replica_under_16_streams_moves_their_kv_and_fails_none(stack, hf):
    """The K/V moves: the target replica computes no prefill for the moved sequences."""
    target_metrics = None
    for node in stack.extra_nodes:
        if "second-p1-extra" in " ".join(node.args):
            target_metrics = f"http://127.0.0.1:{node.args[node.args.index('--metrics-port') + 1]}/metrics"
    assert target_metrics is not None, "the previous test registers second-p1-extra"
    # Every stream starts on the configured replica; the new one only gets what moves.
    httpx.post(f"{stack.url}/api/nodes/second-p1-extra/cordon").raise_for_status()
    prompts = [f"Stream {i} of the drain test says" for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        runs = [pool.submit(process, stack.url, p, 100, model="second") for p in prompts]
        deadline = time.monotonic() + 60
        while True:
            tasks = [t for t in httpx.get(f"{stack.url}/api/tasks").json()["tasks"] if t["model"] == "second"]
            if len(tasks) == 16 and all(t["state"] == "decode" and t["generated_tokens"] >= 2 for t in tasks):
                break
            assert time.monotonic() < deadline, tasks
            time.sleep(0.01)
        assert all("m1-part1-r0" in t["chain"] for t in tasks)
        before = prefill_tokens(target_metrics)
        httpx.post(f"{stack.url}/api/nodes/second-p1-extra/uncordon").raise_for_status()
        drained = httpx.post(f"{stack.url}/api/nodes/m1-part1-r0/drain", json={"timeout_s": 60}, timeout=90)
        answers = [r.result() for r in runs]
    assert drained.status_code == 200, drained.text
    report = drained.json()
    assert report["removed"] and report["recomputed"] == 0, report
    assert report["moved"] >= 12, report  # the few that finished before their turn to move had nothing to move
    assert report["moved_direct"] == report["moved"], report  # on loopback the target reaches the source itself
    assert len(report["pause_ms"]) == report["moved"] and 0 < report["max_pause_ms"] < 10_000, report
    print(f"drain: {report['moved']} sequences moved, pause max {report['max_pause_ms']:.1f} ms, "
          f"median {sorted(report['pause_ms'])[len(report['pause_ms']) // 2]:.1f} ms")  # fmt: skip
    assert [a.status_code for a in answers] == [200] * 16
    for prompt, answer in zip(prompts, answers, strict=True):
        assert answer.json()["generated_text"] == hf_text_of(hf, "second", prompt, 100)
    assert prefill_tokens(target_metrics) == before  # nothing recomputed there
    assert "m1-part1-r0" not in nodes(stack)


def test_rolling_a_model_from_3_to_4_partitions_under_load_fails_no_request(stack, hf, tiny_checkpoint):
    new_nodes = []
    for p in range(4):
        _, address, _ = start_node(stack, f"tiny-4way-p{p}", tiny_checkpoint, partition=p, num_partitions=4)
        new_nodes.append({"id": f"tiny-4way-p{p}", "address": address, "partition": p})
    results: list[tuple[str, httpx.Response]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            prompt = f"{PROMPTS[worker % 3]} {i}"
            results.append((prompt, process(stack.url, prompt, 16)))
            i += 1

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        workers = [pool.submit(load, w) for w in range(6)]
        time.sleep(1.0)
        rolled = httpx.post(
            f"{stack.url}/api/models/{tiny_checkpoint}/rollout",
            json={"num_partitions": 4, "split": "even", "nodes": new_nodes, "timeout_s": 60},
            timeout=90,
        )
        time.sleep(1.5)
        stop.set()
        for worker in workers:
            worker.result()
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["num_partitions"] == 4
    assert sorted(rolled.json()["retiring"]) == ["part0-r0", "part1-r0", "part2-r0"]
    assert len(results) > 12 and [r.status_code for _, r in results] == [200] * len(results)
    for prompt, answer in results:
        assert answer.json()["generated_text"] == hf_text_of(hf, "tiny", prompt, 16)
    deadline = time.monotonic() + 30
    while {n for n, v in nodes(stack).items() if v["model"] == str(tiny_checkpoint)} != {n["id"] for n in new_nodes}:
        assert time.monotonic() < deadline, nodes(stack)
        time.sleep(0.2)
    answer = process(stack.url, PROMPTS[2], 16).json()
    assert answer["generated_text"] == hf_text_of(hf, "tiny", PROMPTS[2], 16)
    assert {t["node"] for t in answer["timings"]["partitions"]} == {n["id"] for n in new_nodes}
    assert httpx.get(f"{stack.url}/api/ready").status_code == 200
