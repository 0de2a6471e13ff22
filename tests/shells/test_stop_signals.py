"""How a gRPC service stops (GrpcServer.run_until_signal), on a real node process:
SIGTERM drains first, SIGINT does not, a second signal does not wait."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from splitgpt.bench.local_stack import free_port_base
from splitgpt.shells.grpc_runtime import insecure_channel, probe_health


async def health(port: int) -> str:
    async with insecure_channel(f"127.0.0.1:{port}") as channel:
        return await probe_health(channel, timeout_s=1.0)


async def serving_node(checkpoint, drain_s: float) -> tuple[subprocess.Popen, int]:
    port = free_port_base(1)
    process = subprocess.Popen(
        [sys.executable, "-m", "splitgpt.cli", "node", "--model-id", str(checkpoint), "--partition", "0",
         "--num-partitions", "1", "--port", str(port), "--drain-s", str(drain_s)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while await health(port) != "SERVING":
        assert process.poll() is None and time.monotonic() < deadline, (
            process.communicate()[0] if process.poll() is not None else ""
        )
        await asyncio.sleep(0.2)
    return process, port


async def exit_within(process: subprocess.Popen, seconds: float) -> float:
    started = time.monotonic()
    while process.poll() is None:
        assert time.monotonic() - started < seconds, f"still running after {seconds}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_sigterm_drains_and_a_second_signal_stops_at_once(tiny_checkpoint):
    process, port = await serving_node(tiny_checkpoint, drain_s=30)
    try:
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.0)
        assert process.poll() is None and await health(port) == "NOT_SERVING"  # draining: still answering
        process.send_signal(signal.SIGTERM)
        await exit_within(process, 5)
    finally:
        process.kill()
    out = process.communicate()[0]
    assert process.returncode == 0 and "second signal" in out and "Traceback" not in out, out


async def test_sigint_skips_the_drain(tiny_checkpoint):
    process, _ = await serving_node(tiny_checkpoint, drain_s=30)
    try:
        process.send_signal(signal.SIGINT)
        await exit_within(process, 5)
    finally:
        process.kill()
    out = process.communicate()[0]
    assert process.returncode == 0 and "Traceback" not in out, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_while_loading_exits_without_a_traceback(tiny_checkpoint, sig):
    port = free_port_base(1)
    process = subprocess.Popen(
        [sys.executable, "-m", "splitgpt.cli", "node", "--model-id", str(tiny_checkpoint), "--partition", "0",
         "--num-partitions", "1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        await asyncio.sleep(0.5)  # importing torch: long before it serves
        assert process.poll() is None
        process.send_signal(sig)
        await exit_within(process, 30)
    finally:
        process.kill()
    out = process.communicate()[0]
    assert "Traceback" not in out, out
