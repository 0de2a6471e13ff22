"""`splitgpt bench` end to end on a tiny checkpoint: the real stack, the real
baseline process, interleaved rounds, and the report files. It checks what the
benchmark records and that no request failed, not how fast anything was."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.system  # starts real services as processes


def test_bench_runs_interleaved_rounds_and_writes_its_report(tiny_checkpoint, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "splitgpt.cli", "bench", "--model", str(tiny_checkpoint), "--out", str(out),
         "--partitions", "2", "--split", "even", "--rounds", "2", "--new-tokens", "4", "--curve", "1,2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "latest.json").read_text())
    assert results["failed_requests"] == 0
    assert len(results["rounds"]) == 2
    for r in results["rounds"]:
        assert r["single_stream_ratio"] > 0 and r["throughput_32_ratio"] > 0
    # The headline ratios are those of the median round, recomputable from the figures reported.
    st, hf = results["stack"], results["hf"]
    assert results["ratios"]["throughput_32"] == st["concurrent_32"]["output_tokens_per_s"] / hf["batch_32_output_tokens_per_s"]
    assert results["ratios"]["throughput_32"] in [r["throughput_32_ratio"] for r in results["rounds"]]
    assert [c["concurrency"] for c in st["curve"]] == [1, 2] and set(hf["batched_output_tokens_per_s"]) == {"1", "2"}
    assert st["concurrent_32"]["output_tokens"] == 32 * 4  # every request ran to its fixed length
    assert "single-stream decode" in (out / "latest.txt").read_text()
