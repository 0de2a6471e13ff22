"""Each gRPC service's metrics port, in this process: settings, serving, a taken port, a loading node."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest
from prometheus_client import generate_latest

from splitgpt.bench.local_stack import free_port_base
from splitgpt.core.tokenization import load_tokenizer
from splitgpt.rpc import tokenizer_pb2
from splitgpt.shells import node_service
from splitgpt.shells.cli_settings import settings_from_cli
from splitgpt.shells.coordinator_service import CoordinatorSettings
from splitgpt.shells.metrics_http import MetricsPortError, process_registry, serve_metrics
from splitgpt.shells.node_service import NodeSettings
from splitgpt.shells.tokenizer_metrics import TokenizerMetrics
from splitgpt.shells.tokenizer_service import TokenizerServicer, TokenizerSettings
from tests.metrics_text import PROCESS_FAMILIES, Scrape


def assert_nobody_listens(port: int) -> None:
    with socket.socket() as s:  # SO_REUSEADDR: the scrape's connection may linger in TIME_WAIT, a listener may not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


SERVICES = [("NODE", NodeSettings), ("COORDINATOR", CoordinatorSettings), ("TOKENIZER", TokenizerSettings)]


@pytest.mark.parametrize(("prefix", "settings_class"), SERVICES)
def test_metrics_port_is_off_by_default_and_set_by_environment_or_flag(monkeypatch, prefix, settings_class):
    assert (settings_class().metrics_port, settings_class().metrics_host) == (0, None)
    monkeypatch.setenv(f"SPLITGPT_{prefix}_METRICS_PORT", "9123")
    monkeypatch.setenv(f"SPLITGPT_{prefix}_METRICS_HOST", "0.0.0.0")
    assert (settings_class().metrics_port, settings_class().metrics_host) == (9123, "0.0.0.0")
    flagged = settings_from_cli(settings_class, ["--metrics-port", "9200"], "test", "")
    assert flagged.metrics_port == 9200


def test_serve_metrics_off_on_and_on_a_taken_port():
    registry = process_registry("tokenizer")
    assert serve_metrics(registry, "127.0.0.1", 0, "tokenizer") is None
    port = free_port_base(1)
    server = serve_metrics(registry, "127.0.0.1", port, "tokenizer")
    try:
        scraped = Scrape(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        assert PROCESS_FAMILIES <= set(scraped.families)
        assert scraped.labelsets("splitgpt_service_info") == [{"service": "tokenizer", "version": "0.1.0"}]
        with pytest.raises(MetricsPortError, match=rf"127.0.0.1:{port}.*--metrics-port"):
            serve_metrics(process_registry("node"), "127.0.0.1", port, "node")
    finally:
        server.close()
    assert_nobody_listens(port)  # closed


async def test_a_loading_node_is_visible_before_its_weights_are(tiny_checkpoint, monkeypatch):
    release = threading.Event()
    real_load = node_service.load_engine

    def slow_load(settings):
        release.wait(30)
        return real_load(settings)

    monkeypatch.setattr(node_service, "load_engine", slow_load)
    port = free_port_base(1)
    settings = NodeSettings(model_id=str(tiny_checkpoint), node_id="n1", partition=1, num_partitions=2, port=0, metrics_port=port)
    starting = asyncio.create_task(node_service.start(settings))
    url = f"http://127.0.0.1:{port}/metrics"
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(100):
            try:
                loading = Scrape((await client.get(url)).text)
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
        assert loading.value("splitgpt_service_info", service="node") == 1
        assert "splitgpt_node_info" not in loading.families  # nothing loaded yet
        assert loading.value("splitgpt_node_kv_budget_tokens", node="n1", partition="1") == 65536
        release.set()
        server = await starting
        loaded = Scrape((await client.get(url)).text)
    info = loaded.labelsets("splitgpt_node_info")
    assert info == [{"node": "n1", "partition": "1", "start_block": "2", "end_block": "4", "num_partitions": "2",
                     "model": str(tiny_checkpoint)}]  # fmt: skip
    assert loaded.value("splitgpt_node_load_duration_seconds") > 0
    assert loaded.value("splitgpt_node_weight_bytes") > 0
    await server.stop(0)
    assert_nobody_listens(port)  # stopping the server closed its metrics port


async def test_tokenizer_calls_that_fail_are_counted_as_errors(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metrics = TokenizerMetrics(process_registry("tokenizer"))
    servicer = TokenizerServicer(await asyncio.to_thread(load_tokenizer, "gpt2"), None, metrics)
    await servicer.Encode(tokenizer_pb2.EncodeRequest(text="hello world"), None)
    with pytest.raises(Exception):  # noqa: B017  (the core's TokenIdError, mapped to INVALID_ARGUMENT by the shell)
        await servicer.Decode(tokenizer_pb2.DecodeRequest(ids=[10**9]), None)
    scraped = Scrape(generate_latest(metrics.registry).decode())
    assert scraped.value("splitgpt_tokenizer_operations_total", op="encode") == 1
    assert scraped.value("splitgpt_tokenizer_tokens_total", op="encode") == 2
    assert scraped.value("splitgpt_tokenizer_operations_total", op="decode") == 1
    assert scraped.value("splitgpt_tokenizer_errors_total", op="decode") == 1
    assert scraped.value("splitgpt_tokenizer_tokens_total", op="decode") == 0
