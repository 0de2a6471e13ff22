"""Every gRPC service's /metrics on the real stack (`splitgpt up`), as Prometheus scrapes them.

Traffic goes through the API; then each service's families must be there
(docs/metrics.md), with values that moved the way the traffic says, and every
output must pass `promtool check metrics`.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from splitgpt.bench.local_stack import Stack
from splitgpt.core.cluster_config import ClusterConfig, ModelConfig, NodeEntry
from splitgpt.core.engine import GenerationError
from splitgpt.rpc import coordinator_pb2, node_pb2, tokenizer_pb2, tokenizer_pb2_grpc
from splitgpt.shells.coordinator_metrics import CoordinatorMetrics
from splitgpt.shells.coordinator_service import CoordinatorServicer, CoordinatorSettings, engine_factory
from splitgpt.shells.grpc_runtime import client_channel
from splitgpt.shells.served_models import ServedModels
from tests.metrics_text import PROCESS_FAMILIES, Scrape, promtool_check_metrics, scrape
from tests.servers import running

NODE_FAMILIES = {
    "splitgpt_node_info": "gauge",
    "splitgpt_node_step_duration_seconds": "histogram",
    "splitgpt_node_step_rows": "histogram",
    "splitgpt_node_step_sequences": "histogram",
    "splitgpt_node_tokens_processed_total": "counter",
    "splitgpt_node_kv_sessions": "gauge",
    "splitgpt_node_kv_cached_tokens": "gauge",
    "splitgpt_node_kv_budget_tokens": "gauge",
    "splitgpt_node_kv_usage_ratio": "gauge",
    "splitgpt_node_kv_cache_bytes": "gauge",
    "splitgpt_node_kv_evictions_total": "counter",
    "splitgpt_node_kv_expirations_total": "counter",
    "splitgpt_node_cache_misses_total": "counter",
    "splitgpt_node_weight_bytes": "gauge",
    "splitgpt_node_resident_memory_bytes": "gauge",
    "splitgpt_node_prefix_blocks": "gauge",
    "splitgpt_node_prefix_bytes": "gauge",
    "splitgpt_node_prefix_hits_total": "counter",
    "splitgpt_node_prefix_reused_tokens_total": "counter",
    "splitgpt_node_load_duration_seconds": "gauge",
    "splitgpt_node_draining": "gauge",
}
COORDINATOR_FAMILIES = {
    "splitgpt_coordinator_requests_running": "gauge",
    "splitgpt_coordinator_requests_waiting": "gauge",
    "splitgpt_coordinator_queue_capacity": "gauge",
    "splitgpt_coordinator_batch_size": "histogram",
    "splitgpt_coordinator_micro_batches_in_flight": "histogram",
    "splitgpt_coordinator_iteration_duration_seconds": "histogram",
    "splitgpt_coordinator_step_duration_seconds": "histogram",
    "splitgpt_coordinator_replays_total": "counter",
    "splitgpt_coordinator_rebuilt_tokens_total": "counter",
    "splitgpt_coordinator_prefix_prompt_tokens_total": "counter",
    "splitgpt_coordinator_prefix_reused_tokens_total": "counter",
    "splitgpt_coordinator_failovers_total": "counter",
    "splitgpt_coordinator_circuit_opens_total": "counter",
    "splitgpt_coordinator_replica_healthy": "gauge",
    "splitgpt_coordinator_requests_rejected_total": "counter",
    "splitgpt_coordinator_requests_finished_total": "counter",
    "splitgpt_coordinator_prompt_tokens_total": "counter",
    "splitgpt_coordinator_generation_tokens_total": "counter",
    "splitgpt_coordinator_time_to_first_token_seconds": "histogram",
    "splitgpt_coordinator_time_per_output_token_seconds": "histogram",
    "splitgpt_coordinator_e2e_request_latency_seconds": "histogram",
}
TOKENIZER_FAMILIES = {
    "splitgpt_tokenizer_operations_total": "counter",
    "splitgpt_tokenizer_operation_duration_seconds": "histogram",
    "splitgpt_tokenizer_tokens_total": "counter",
    "splitgpt_tokenizer_errors_total": "counter",
}
# Families with labels on every series; those that appear only after their first event are left out.
ALWAYS_PRESENT = {
    "node": set(NODE_FAMILIES),
    "coordinator": set(COORDINATOR_FAMILIES)
    - {"splitgpt_coordinator_failovers_total", "splitgpt_coordinator_circuit_opens_total"},
    "tokenizer": set(TOKENIZER_FAMILIES),
}
REQUESTS = 3
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def stack(tiny_checkpoint, tmp_path_factory):
    with running(Stack(tiny_checkpoint, tmp_path_factory.mktemp("metrics-stack"))) as s:
        yield s


def urls(stack: Stack) -> dict[str, list[str]]:
    """Each job's /metrics URLs, from the harness's scrape targets."""
    return {job: [f"http://{target}/metrics" for target in targets] for job, targets in stack.metrics_targets().items()}


def node_scrapes(stack: Stack) -> list[Scrape]:
    return [scrape(url) for url in urls(stack)["splitgpt-node"]]


def generate(stack: Stack, n: int = REQUESTS) -> str:
    """`n` requests through the API; the name of the model that served them."""
    for i in range(n):
        body = {"text": f"Metrics request {i} says", "max_tokens": MAX_TOKENS, "ignore_eos": True, "cache": False}
        r = httpx.post(f"{stack.url}/api/model/process", json=body, timeout=120)
        assert r.status_code == 200, r.text
    return r.json()["model"]


def wait_for(condition, timeout_s: float = 20.0, every_s: float = 0.2):
    """Poll until `condition()` is truthy (caches are released in the background); return its last value."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(every_s)
    return value


def test_the_harness_names_every_prometheus_job(stack):
    targets = stack.metrics_targets()
    assert set(targets) == {"splitgpt-api", "splitgpt-tokenizer", "splitgpt-coordinator", "splitgpt-node"}
    assert targets["splitgpt-api"] == [f"127.0.0.1:{stack.api_port}"]
    assert targets["splitgpt-coordinator"] == [f"127.0.0.1:{stack.metrics_base}"]
    assert targets["splitgpt-tokenizer"] == [f"127.0.0.1:{stack.metrics_base + 1}"]
    assert targets["splitgpt-node"] == [f"127.0.0.1:{stack.metrics_base + 10 + i}" for i in range(3)]
    log = stack.log_path.read_text()
    assert f"http://127.0.0.1:{stack.metrics_base + 12}/metrics" in log  # the launcher printed every URL


@pytest.mark.parametrize("service", ["node", "coordinator", "tokenizer"])
def test_every_contract_family_is_exported_with_its_type(stack, service):
    job = f"splitgpt-{service}"
    expected = {"node": NODE_FAMILIES, "coordinator": COORDINATOR_FAMILIES, "tokenizer": TOKENIZER_FAMILIES}[service]
    for url in urls(stack)[job]:
        s = scrape(url)
        assert PROCESS_FAMILIES <= set(s.families), url
        assert s.labelsets("splitgpt_service_info") == [{"service": service, "version": "0.1.0"}]
        assert s.value("splitgpt_service_info") == 1
        missing = ALWAYS_PRESENT[service] - set(s.families)
        assert not missing, f"{url}: {sorted(missing)}"
        wrong = {name: s.families[name] for name in ALWAYS_PRESENT[service] if s.families[name] != expected[name]}
        assert not wrong, wrong


def test_node_metrics_follow_the_steps_and_the_kv_cache(stack):
    before = node_scrapes(stack)
    generate(stack)
    after = node_scrapes(stack)
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        labels = {"node": f"part{i}-r0", "partition": str(i)}
        info = a.labelsets("splitgpt_node_info")[0]
        assert {k: info[k] for k in ("node", "partition", "num_partitions")} == {**labels, "num_partitions": "3"}
        assert int(info["start_block"]) < int(info["end_block"])
        # Every series carries the node and the partition.
        for name, sample_labels, _ in a.samples:
            if name.startswith("splitgpt_node_"):
                assert labels.items() <= sample_labels.items(), (name, sample_labels)
        steps = a.value("splitgpt_node_step_duration_seconds_count") - b.value("splitgpt_node_step_duration_seconds_count")
        assert steps >= REQUESTS * MAX_TOKENS / 3  # one prefill + decodes per request (some batched together)
        assert a.value("splitgpt_node_step_duration_seconds_count", phase="prefill") > b.value(
            "splitgpt_node_step_duration_seconds_count", phase="prefill"
        )
        assert a.value("splitgpt_node_step_duration_seconds_count", phase="decode") > b.value(
            "splitgpt_node_step_duration_seconds_count", phase="decode"
        )
        decode_rows = a.value("splitgpt_node_tokens_processed_total", phase="decode") - b.value(
            "splitgpt_node_tokens_processed_total", phase="decode"
        )
        assert decode_rows == REQUESTS * (MAX_TOKENS - 1)  # each token after the first is one decode row
        assert a.value("splitgpt_node_step_rows_count") - b.value("splitgpt_node_step_rows_count") == steps
        assert a.value("splitgpt_node_weight_bytes") > 0
        # The process's RSS holds its weights; the process collector, read in the same scrape, agrees.
        resident = a.value("splitgpt_node_resident_memory_bytes")
        assert resident > a.value("splitgpt_node_weight_bytes")
        assert abs(resident - a.value("process_resident_memory_bytes")) < 0.1 * resident
        assert a.value("splitgpt_node_load_duration_seconds") > 0
        assert a.value("splitgpt_node_kv_budget_tokens") == 65536
        assert a.value("splitgpt_node_draining") == 0
    # Released when the requests end (in the background): every KV gauge back to 0.
    settled = wait_for(lambda: all(s.value("splitgpt_node_kv_sessions") == 0 for s in node_scrapes(stack)))
    assert settled, [s.value("splitgpt_node_kv_sessions") for s in node_scrapes(stack)]
    for s in node_scrapes(stack):
        assert s.value("splitgpt_node_kv_cached_tokens") == 0
        assert s.value("splitgpt_node_kv_usage_ratio") == 0
        assert s.value("splitgpt_node_kv_cache_bytes") == 0


def test_node_kv_gauges_move_while_a_request_holds_its_cache(stack):
    """A long streamed request, read while it runs: its session and tokens are on every node."""
    body = {"text": "A long request", "max_tokens": 100, "ignore_eos": True, "cache": False}
    with httpx.stream("POST", f"{stack.url}/api/model/stream", json=body, timeout=120) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        while "token" not in next(lines):  # the first token: the caches are filled
            pass
        held = node_scrapes(stack)
        for _ in lines:  # to its end
            pass
    for s in held:
        assert s.value("splitgpt_node_kv_sessions") >= 1
        assert s.value("splitgpt_node_kv_cached_tokens") >= 4  # the prompt, at least
        assert 0 < s.value("splitgpt_node_kv_usage_ratio") < 1
        assert s.value("splitgpt_node_kv_cache_bytes") > 0


def test_coordinator_metrics_count_requests_tokens_and_steps(stack):
    url = urls(stack)["splitgpt-coordinator"][0]
    before = scrape(url)
    model = generate(stack)
    after = wait_for(lambda: (s := scrape(url)).value("splitgpt_coordinator_requests_running") == 0 and s)
    assert after, "requests still running after they were answered"

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("splitgpt_coordinator_requests_finished_total", finish_reason="length") == REQUESTS
    assert grew("splitgpt_coordinator_generation_tokens_total") == REQUESTS * MAX_TOKENS
    assert grew("splitgpt_coordinator_prompt_tokens_total") >= REQUESTS * 4
    assert grew("splitgpt_coordinator_time_to_first_token_seconds_count") == REQUESTS
    assert grew("splitgpt_coordinator_time_per_output_token_seconds_count") == REQUESTS * (MAX_TOKENS - 1)
    assert grew("splitgpt_coordinator_e2e_request_latency_seconds_count") == REQUESTS
    assert grew("splitgpt_coordinator_iteration_duration_seconds_count") >= MAX_TOKENS
    assert grew("splitgpt_coordinator_batch_size_count") == grew("splitgpt_coordinator_iteration_duration_seconds_count")
    for p in range(3):
        assert grew("splitgpt_coordinator_step_duration_seconds_count", partition=str(p), node=f"part{p}-r0") >= MAX_TOKENS
    assert after.value("splitgpt_coordinator_requests_waiting") == 0
    assert after.value("splitgpt_coordinator_queue_capacity") == 64 + 256
    healthy = {(ls["partition"], ls["node"]): v for n, ls, v in after.samples if n == "splitgpt_coordinator_replica_healthy"}
    assert healthy == {(str(p), f"part{p}-r0"): 1.0 for p in range(3)}
    assert after.value("splitgpt_coordinator_replays_total") == 0
    assert after.labelsets("splitgpt_coordinator_requests_rejected_total") == [
        {"reason": "overloaded", "model": model},
        {"reason": "tenant_share", "model": model},
        {"reason": "unavailable", "model": model},
    ]
    # One model served: every coordinator series is that model's (its served name, the API's `model`).
    for name, labels, _ in after.samples:
        if name.startswith("splitgpt_coordinator_"):
            assert labels.get("model") == model, (name, labels)
    assert after.labelsets("splitgpt_coordinator_requests_running") == [{"model": model}]
    assert after.labelsets("splitgpt_coordinator_queue_capacity") == [{"model": model}]


def test_coordinator_counts_a_cancelled_request(stack):
    url = urls(stack)["splitgpt-coordinator"][0]
    before = scrape(url).value("splitgpt_coordinator_requests_finished_total", finish_reason="cancelled")
    body = {"text": "Cut short", "max_tokens": 100, "ignore_eos": True, "cache": False}
    with httpx.stream("POST", f"{stack.url}/api/model/stream", json=body, timeout=120) as r:
        assert r.status_code == 200
        next(line for line in r.iter_lines() if "token" in line)
    # The client went away: the gateway cancels the coordinator's call.
    assert wait_for(
        lambda: scrape(url).value("splitgpt_coordinator_requests_finished_total", finish_reason="cancelled") == before + 1
    )


def test_tokenizer_metrics_count_each_operation(stack):
    url = urls(stack)["splitgpt-tokenizer"][0]
    before = scrape(url)
    generate(stack, 1)

    async def decode_directly() -> None:
        async with client_channel(f"127.0.0.1:{stack.grpc_base + 1}", stack.security()) as channel:
            stub = tokenizer_pb2_grpc.TokenizerStub(channel)
            await stub.Decode(tokenizer_pb2.DecodeRequest(ids=[15496, 11, 995]), timeout=10)

    asyncio.run(decode_directly())
    after = scrape(url)
    assert after.value("splitgpt_tokenizer_operations_total", op="encode") > before.value(
        "splitgpt_tokenizer_operations_total", op="encode"
    )
    assert after.value("splitgpt_tokenizer_tokens_total", op="encode") > before.value(
        "splitgpt_tokenizer_tokens_total", op="encode"
    )
    assert (
        after.value("splitgpt_tokenizer_operations_total", op="decode")
        == before.value("splitgpt_tokenizer_operations_total", op="decode") + 1
    )
    assert (
        after.value("splitgpt_tokenizer_tokens_total", op="decode")
        == before.value("splitgpt_tokenizer_tokens_total", op="decode") + 3
    )
    assert after.value("splitgpt_tokenizer_operations_total", op="table") >= 1  # the gateway's detokenizing table
    assert after.value("splitgpt_tokenizer_operation_duration_seconds_count", op="encode") == after.value(
        "splitgpt_tokenizer_operations_total", op="encode"
    )
    assert after.value("splitgpt_tokenizer_errors_total") == 0


def test_every_service_passes_promtool_check_metrics(stack):
    generate(stack, 1)  # every histogram has observations
    for job_urls in urls(stack).values():
        for url in job_urls:
            text = scrape(url).text
            assert "splitgpt_service_info" in text, url
            promtool_check_metrics(text)


# --- several models on one coordinator, in process (no node, no port) --------------------


async def test_a_two_model_coordinator_counts_each_models_requests_apart():
    """Two served models, wired as `start` wires them: each engine reports to its own
    model's observer, a request refused before its engine exists counts under its
    model, and a name the coordinator does not serve becomes no label."""

    def nodes(prefix: str, n: int) -> list[NodeEntry]:
        return [NodeEntry(id=f"{prefix}{p}", address="127.0.0.1:9", partition=p) for p in range(n)]

    config = ClusterConfig(models=[
        ModelConfig(name="small", num_partitions=2, nodes=nodes("s", 2)),
        ModelConfig(model="models/big", num_partitions=3, nodes=nodes("b", 3)),  # unnamed: served as its checkpoint
    ])  # fmt: skip
    settings = CoordinatorSettings(max_batch_size=0, max_queue=0)  # every admitted request overloads
    bound: list[CoordinatorMetrics] = []
    models = ServedModels(config, settings, None, engine_factory(settings, lambda name: bound[0].for_model(name)))
    metrics = CoordinatorMetrics(models, 0, registry=CollectorRegistry())
    bound.append(metrics)
    servicer = CoordinatorServicer(models, settings, metrics.for_model)

    def exposition() -> Scrape:
        return Scrape(generate_latest(metrics.registry).decode())

    async def generate(model: str) -> str:
        request = coordinator_pb2.GenerateRequest(request_id=f"r-{model}", prompt_ids=[1, 2], max_tokens=1, model=model)
        with pytest.raises(GenerationError) as refused:
            [e async for e in servicer.Generate(request, None)]
        return refused.value.kind

    try:
        # Every configured model's series from the start, its own partitions.
        s = exposition()
        assert s.labelsets("splitgpt_coordinator_requests_running") == [{"model": "small"}, {"model": "models/big"}]
        assert s.labelsets("splitgpt_coordinator_queue_capacity") == [{"model": "small"}, {"model": "models/big"}]
        rebuilt = {(ls["model"], ls["partition"]) for ls in s.labelsets("splitgpt_coordinator_rebuilt_tokens_total")}
        assert rebuilt == {("small", "0"), ("small", "1"), ("models/big", "0"), ("models/big", "1"), ("models/big", "2")}
        assert len(s.labelsets("splitgpt_coordinator_requests_rejected_total")) == 6

        # Still starting (no engine): refused under the model the request named.
        assert await generate("models/big") == "unavailable"
        assert await generate("no-such-model") == "not_found"
        s = exposition()
        assert s.value("splitgpt_coordinator_requests_rejected_total", reason="unavailable", model="models/big") == 1
        assert s.value("splitgpt_coordinator_requests_rejected_total", reason="unavailable", model="small") == 0
        assert "no-such-model" not in s.text

        # The models known (as a last partition's Info tells): each split's engine is built with its model's observer.
        for _, split in models.splits():
            split.cluster.model = node_pb2.NodeInfo(eos_token_id=0, n_ctx=32, vocab_size=50)
        assert await generate("small") == "overloaded"
        assert await generate("small") == "overloaded"
        assert await generate("") == "overloaded"  # the default model: small
        assert await generate("models/big") == "overloaded"
        small, big = (models.engine(m.current()) for m in models.models.values())
        assert small.observer is metrics.for_model("small") and big.observer is metrics.for_model("models/big")
        small.observer.admitted(5)
        small.observer.step(1, "s1", 0.01)
        small.observer.finished("eos", 3, 0.2)
        big.observer.step(2, "b2", 0.02)
        big.observer.finished("length", 7, 0.5)
        big.observer.replay("moved")
        s = exposition()

        def value(name: str, model: str, **labels: str) -> float:
            return s.value(name, model=model, **labels)

        assert value("splitgpt_coordinator_requests_rejected_total", "small", reason="overloaded") == 3
        assert value("splitgpt_coordinator_requests_rejected_total", "models/big", reason="overloaded") == 1
        assert value("splitgpt_coordinator_requests_finished_total", "small", finish_reason="eos") == 1
        assert value("splitgpt_coordinator_requests_finished_total", "models/big", finish_reason="eos") == 0
        assert value("splitgpt_coordinator_requests_finished_total", "models/big", finish_reason="length") == 1
        assert value("splitgpt_coordinator_generation_tokens_total", "small") == 3
        assert value("splitgpt_coordinator_generation_tokens_total", "models/big") == 7
        assert value("splitgpt_coordinator_prompt_tokens_total", "small") == 5
        assert value("splitgpt_coordinator_prompt_tokens_total", "models/big") == 0
        assert value("splitgpt_coordinator_replays_total", "models/big", reason="moved") == 1
        assert value("splitgpt_coordinator_replays_total", "small") == 0
        assert s.labelsets("splitgpt_coordinator_step_duration_seconds_count") == [
            {"partition": "1", "node": "s1", "model": "small"},
            {"partition": "2", "node": "b2", "model": "models/big"},
        ]
        assert value("splitgpt_coordinator_e2e_request_latency_seconds_count", "small") == 1
        # A sum without `model` is the whole coordinator, as before.
        assert s.value("splitgpt_coordinator_generation_tokens_total") == 10
        promtool_check_metrics(s.text)
    finally:
        await models.close()
