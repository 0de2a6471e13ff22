"""`splitgpt up`: one command for the stack, and a clear word when it cannot start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx

from splitgpt.bench.local_stack import Stack


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_unreachable_hub_fails_at_start_naming_the_offline_way(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "splitgpt.cli", "up", "--model", "gpt2", "--run-dir", str(tmp_path)],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "could not get 'gpt2' from the Hugging Face Hub" in r.stderr
    assert "splitgpt tiny-model" in r.stderr and "MODEL_ID=" in r.stderr


def test_up_serves_two_partitions_and_sigterm_stops_every_child(tiny_checkpoint, tmp_path):
    stack = Stack(tiny_checkpoint, tmp_path, partitions=2, split="0-3,3-4")
    try:
        stack.wait_ready()
        nodes = httpx.get(f"{stack.url}/api/cluster").json()["nodes"]
        assert [n["layers"] for n in nodes] == [[0, 3], [3, 4]]
        r = httpx.post(f"{stack.url}/api/model/process", json={"text": "Hi", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200
    finally:
        assert stack.stop() == 0
    log = stack.log_path.read_text()
    for name in ("tokenizer", "part0-r0", "part1-r0", "coordinator", "api"):
        assert f"{name:<12}| " in log  # each service's lines carry its name
    ports = [int(stack.node_address(p).rsplit(":", 1)[1]) for p in range(2)] + [stack.api_port, stack.grpc_base]
    assert not any(listening(port) for port in ports)  # every child is gone


def test_a_split_that_does_not_fit_the_model_is_refused_before_anything_starts(tiny_checkpoint, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "splitgpt.cli", "up", "--model", str(tiny_checkpoint), "--partitions", "2",
         "--split", "1-3,3-4", "--run-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert "range 0 starts at block 1, expected 0" in r.stderr
