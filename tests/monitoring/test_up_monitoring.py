"""`splitgpt up --monitoring`: a real Prometheus beside the stack, scraping every
service with the project's alert rules, its URL printed, stopped with the stack."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from splitgpt.bench.local_stack import Stack, free_port_base
from splitgpt.launcher import parse_args, plan, start_monitoring
from tests.servers import require

pytestmark = pytest.mark.system  # starts real services and a real Prometheus


def test_without_prometheus_installed_the_stack_starts_without_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("splitgpt.launcher.find_prometheus", lambda: None)
    args = parse_args(["--monitoring", "--no-ui", "--run-dir", str(tmp_path)])
    assert start_monitoring(args) is None
    assert "apt-get install prometheus" in capsys.readouterr().err
    children, _, _ = plan(args, Path("model"))
    assert "prometheus" not in [c.name for c in children]


def test_up_monitoring_scrapes_every_service_and_loads_the_alert_rules(tiny_checkpoint, tmp_path):
    require("prometheus", "prometheus")
    prometheus_port = free_port_base(1)
    stack = Stack(
        tiny_checkpoint, tmp_path, partitions=2, split="0-3,3-4",
        extra_args=["--monitoring", "--prometheus-port", str(prometheus_port)],
    )  # fmt: skip
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    try:
        stack.wait_ready()
        assert f"Prometheus: {prometheus}" in stack.log_path.read_text()
        expected = {job: len(addresses) for job, addresses in stack.metrics_targets().items()}
        deadline = time.monotonic() + 60
        while True:  # the first scrape of each target comes within one interval (5 s)
            targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            up: dict[str, int] = {}
            for t in targets:
                up[t["labels"]["job"]] = up.get(t["labels"]["job"], 0) + (t["health"] == "up")
            if up == expected or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert up == expected, targets
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        names = {rule["name"] for group in groups for rule in group["rules"]}
        assert {"SplitgptNodeReplicaDown", "SplitgptPartitionNoHealthyReplica"} <= names
        assert all(rule["health"] != "err" for group in groups for rule in group["rules"])
    finally:
        assert stack.stop() == 0
    with pytest.raises(httpx.HTTPError):  # stopped with the stack
        httpx.get(f"{prometheus}/-/ready", timeout=2)


def test_with_api_keys_prometheus_presents_one_as_the_api_reads_them(monkeypatch, tmp_path):
    """The API's /metrics needs a key once keys are set: the first plain one configured, from
    the keys file too, never an admin key; the config is readable by its owner only."""
    keys_file = tmp_path / "keys"
    keys_file.write_text("# operators\nadmin:first-key-from-the-file-0123456789\nsecond-key-0123456789abcdef\n")
    monkeypatch.delenv("SPLITGPT_API_KEYS", raising=False)
    monkeypatch.setenv("SPLITGPT_API_KEYS_FILE", str(keys_file))
    monkeypatch.setattr("splitgpt.launcher.find_prometheus", lambda: "/usr/bin/prometheus")
    args = parse_args(["--monitoring", "--no-ui", "--run-dir", str(tmp_path / "run")])
    assert start_monitoring(args) == "http://127.0.0.1:9090"
    config = json.loads((tmp_path / "run" / "prometheus" / "prometheus.yml").read_text().split("\n", 1)[1])
    api_job = next(job for job in config["scrape_configs"] if job["job_name"] == "splitgpt-api")
    assert api_job["authorization"] == {"type": "Bearer", "credentials": "second-key-0123456789abcdef"}
    assert (tmp_path / "run" / "prometheus" / "prometheus.yml").stat().st_mode & 0o777 == 0o600


def test_prometheus_never_gets_an_admin_key(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SPLITGPT_API_KEYS", "admin:only-an-admin-key-0123456789")
    monkeypatch.delenv("SPLITGPT_API_KEYS_FILE", raising=False)
    monkeypatch.setattr("splitgpt.launcher.find_prometheus", lambda: "/usr/bin/prometheus")
    (tmp_path / "run" / "prometheus").mkdir(parents=True)
    (tmp_path / "run" / "prometheus" / "prometheus.yml").write_text("{}")
    (tmp_path / "run" / "prometheus" / "prometheus.yml").chmod(0o644)  # an older, wider file
    args = parse_args(["--monitoring", "--no-ui", "--run-dir", str(tmp_path / "run")])
    assert start_monitoring(args)
    text = (tmp_path / "run" / "prometheus" / "prometheus.yml").read_text()
    assert "only-an-admin-key" not in text and "authorization" not in text
    assert "only admin keys are set" in capsys.readouterr().err
    assert (tmp_path / "run" / "prometheus" / "prometheus.yml").stat().st_mode & 0o777 == 0o600
