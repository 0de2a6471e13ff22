"""`splitgpt up`: one command for the stack, and a clear word when it cannot start."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from splitgpt.bench.local_stack import Stack, free_port_base
from splitgpt.launcher import parse_args, plan
from splitgpt.shells.cli_settings import settings_from_cli
from splitgpt.shells.node_service import NodeSettings

system = pytest.mark.system  # starts real services as processes
ROOT = Path(__file__).resolve().parents[1]


def free_ports() -> list[str]:
    """Ports of a stack that is refused before it binds any: free ones, not the defaults,
    which any socket of this host may hold for a minute (a client's ephemeral port in TIME_WAIT)."""
    return ["--grpc-port-base", str(free_port_base(60)), "--api-port", str(free_port_base(1)),
            "--metrics-port-base", str(free_port_base(20)), "--no-ui"]  # fmt: skip


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@system
def test_unreachable_hub_fails_at_start_naming_the_offline_way(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "splitgpt.cli", "up", "--model", "gpt2", "--run-dir", str(tmp_path), *free_ports()],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "could not get 'gpt2' from the Hugging Face Hub" in r.stderr
    assert "make up-tiny" in r.stderr and "splitgpt tiny-model" in r.stderr and "MODEL_ID=" in r.stderr


@system
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


@system
def test_a_split_that_does_not_fit_the_model_is_refused_before_anything_starts(tiny_checkpoint, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "splitgpt.cli", "up", "--model", str(tiny_checkpoint), "--partitions", "2",
         "--split", "1-3,3-4", "--run-dir", str(tmp_path), *free_ports()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert "range 0 starts at block 1, expected 0" in r.stderr


@system
@pytest.mark.parametrize("taken, flag", [("api", "--api-port"), ("node", "--grpc-port-base")])
def test_a_port_in_use_is_named_with_the_option_that_moves_it_before_anything_starts(tiny_checkpoint, tmp_path, taken, flag):
    base, api_port = free_port_base(60), free_port_base(1)
    port = api_port if taken == "api" else base + 51  # part1-r0
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        started = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "splitgpt.cli", "up", "--model", str(tiny_checkpoint), "--partitions", "2", "--no-ui",
             "--api-port", str(api_port), "--grpc-port-base", str(base), "--run-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert r.returncode == 2
    assert f"port {port} on 127.0.0.1 (for {'api' if taken == 'api' else 'part1-r0'}) is already in use" in r.stderr
    assert f"by pid {os.getpid()}" in r.stderr and f"choose another with {flag}" in r.stderr
    assert "nothing was started" in r.stderr and "|" not in r.stdout  # no child said a word
    assert time.monotonic() - started < 30  # before loading the model


def test_up_help_shows_every_default_and_so_do_the_services(capsys):
    from splitgpt.cli import main

    for command, expected in (("up", "--api-port API_PORT   the HTTP API (default: 8000)"), ("node", "(default: 50100)"),
                              ("api", "--shutdown-grace-s")):  # fmt: skip
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert exited.value.code == 0 and expected in out and "(default:" in out, out


@system
def test_a_killed_node_is_reported_and_restarted(tiny_checkpoint, tmp_path):
    stack = Stack(tiny_checkpoint, tmp_path, partitions=1, restart=True, env={"SPLITGPT_COORDINATOR_HEALTH_INTERVAL_S": "0.3"})
    try:
        stack.wait_ready()
        pid = stack.node_pid(0)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 40
        while True:
            nodes = {n["id"]: n for n in httpx.get(f"{stack.url}/api/cluster").json()["nodes"]}
            try:
                back = stack.node_pid(0) != pid and nodes["part0-r0"]["status"] == "SERVING"
            except LookupError:
                back = False
            if back or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert back, nodes
        r = httpx.post(f"{stack.url}/api/model/process", json={"text": "Hi", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        assert stack.stop() == 0
    log = stack.log_path.read_text()
    assert "splitgpt up: part0-r0 was killed by SIGKILL (signal 9); restarting it in 1s (restart 1 of 5)" in log


def node_settings(argv: list[str]) -> NodeSettings:
    """What a node child makes of its command line (`splitgpt node ...`), as its main does."""
    return settings_from_cli(NodeSettings, argv[argv.index("node") + 1 :], "splitgpt node", "")


def test_dtype_reaches_every_node_and_float32_is_the_default(monkeypatch):
    monkeypatch.delenv("SPLITGPT_NODE_DTYPE", raising=False)
    for flags, dtype in (([], "float32"), (["--dtype", "bfloat16"], "bfloat16"), (["--dtype", "float32"], "float32")):
        children, _, _ = plan(parse_args([*flags, "--replicas", "2", "--no-ui"]), Path("model"))
        nodes = [c for c in children if c.name.startswith("part")]
        assert len(nodes) == 6
        for child in nodes:
            assert node_settings(child.argv).dtype == dtype, child.argv
        # the nodes' setting only: no other service takes it
        assert all("--dtype" not in c.argv for c in children if c not in nodes)
    # the nodes' own environment variable sets the default; the flag wins over it
    monkeypatch.setenv("SPLITGPT_NODE_DTYPE", "bfloat16")
    assert parse_args([]).dtype == "bfloat16" and parse_args(["--dtype", "float32"]).dtype == "float32"


def test_a_dtype_the_nodes_do_not_serve_is_refused(monkeypatch, capsys):
    monkeypatch.delenv("SPLITGPT_NODE_DTYPE", raising=False)
    with pytest.raises(SystemExit) as exited:
        parse_args(["--dtype", "float16"])
    assert exited.value.code == 2 and "invalid choice: 'float16'" in capsys.readouterr().err
    monkeypatch.setenv("SPLITGPT_NODE_DTYPE", "bf16")
    with pytest.raises(SystemExit) as exited:
        parse_args([])
    assert exited.value.code == 2 and "SPLITGPT_NODE_DTYPE='bf16'" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("target", ["up", "up-tiny"])
def test_make_up_passes_dtype(target):
    """`make up DTYPE=bfloat16` (and up-tiny): --dtype on the splitgpt up line; float32 unless given."""

    def up_line(*variables: str) -> str:
        out = subprocess.run(["make", "-n", target, *variables], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        (line,) = [line for line in out.stdout.splitlines() if "splitgpt up " in line]
        return line

    assert "--dtype float32" in up_line()
    assert "--dtype bfloat16" in up_line("DTYPE=bfloat16")


def up_dry_run(tiny_checkpoint, tmp_path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "splitgpt.cli", "up", "--model", str(tiny_checkpoint), "--partitions", "2",
         "--run-dir", str(tmp_path), "--no-ui", "--dry-run", *flags],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_node_memory_splits_by_each_nodes_room_and_a_dry_run_prints_the_split(tiny_checkpoint, tmp_path):
    # 4 blocks of 0.2 MB each; the last node also holds the head (26 MB), every node 512 MiB for itself
    r = up_dry_run(tiny_checkpoint, tmp_path, "--node-memory", "700M,600M")
    assert r.returncode == 0, r.stderr
    assert "SPLITGPT_NODE_SPLIT=0-3,3-4" in r.stdout  # room 188 MiB against 62: three blocks to one
    assert "partition 0 blocks [0, 3) needs" in r.stdout and not (tmp_path / "cluster.json").exists()


def test_one_micro_batch_when_a_nodes_weights_overflow_the_cache_else_one_per_core(tiny_checkpoint, tmp_path):
    from splitgpt.core.pipelining import shared_host_micro_batches
    from splitgpt.launcher import last_level_cache_bytes

    xl_node = 1_600_000_000  # a quarter of gpt2-xl in float32
    assert shared_host_micro_batches(4, 2, xl_node, 32 * 2**20) == 1
    assert shared_host_micro_batches(4, 2, 20 * 2**20, 32 * 2**20) == 2
    assert shared_host_micro_batches(3, 16, 20 * 2**20, 32 * 2**20) == 3  # at most one per partition
    assert shared_host_micro_batches(4, 2, 20 * 2**20, None) == 2  # cache unknown: 64 MiB assumed
    # `splitgpt up` says what it chose and why; --micro-batches overrides it
    r = up_dry_run(tiny_checkpoint, tmp_path)
    assert r.returncode == 0, r.stderr
    largest = 2 * 50257 * 64 * 4  # the last node: about 26 MB, the embedding and the packed head (blocks: 0.2 MB)
    expected = shared_host_micro_batches(2, os.cpu_count() or 1, largest, last_level_cache_bytes())
    assert f"splitgpt up: {expected} micro-batch(es) in flight" in r.stdout, r.stdout
    assert "micro-batch(es)" not in up_dry_run(tiny_checkpoint, tmp_path, "--micro-batches", "3").stdout


def test_node_memory_that_cannot_hold_the_model_is_refused_before_anything_starts(tiny_checkpoint, tmp_path):
    r = up_dry_run(tiny_checkpoint, tmp_path, "--node-memory", "1G,520M")
    assert r.returncode == 2
    assert "does not fit" in r.stderr and "partition 1 would hold 1 blocks and the head" in r.stderr
    assert "against a budget of 0.51 GiB" in r.stderr


def test_a_node_refuses_a_share_above_its_memory_budget_before_reading_weights(tiny_checkpoint, monkeypatch):
    from splitgpt.core.memory_plan import MemoryPlanError
    from splitgpt.shells import node_service

    def no_reads(*a, **kw):
        raise AssertionError("weights were read")

    monkeypatch.setattr(node_service.GPT2Partition, "from_checkpoint", no_reads)
    settings = NodeSettings(model_id=str(tiny_checkpoint), node_id="part1-r0", partition=1, num_partitions=2,
                            memory_budget="300M")  # fmt: skip
    with pytest.raises(MemoryPlanError, match=r"part1-r0 needs 0\.5\d GiB for 2 blocks and the head"):
        node_service.load_engine(settings)
