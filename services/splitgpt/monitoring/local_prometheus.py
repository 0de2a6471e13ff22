"""A Prometheus beside a local stack (`splitgpt up --monitoring`, tests/monitoring).

Debian's `prometheus` package provides the binary (/usr/bin/prometheus). The config
written here scrapes the same jobs as prometheus/prometheus.yml does under compose
(`splitgpt-api`, `splitgpt-tokenizer`, `splitgpt-coordinator`, `splitgpt-node`), from
static targets instead of DNS, so the Grafana dashboard's queries and the alert rules
(prometheus/alerts.yml) work unchanged against it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

DEBIAN_BINARY = Path("/usr/bin/prometheus")
# The jobs of docs/metrics.md; the dashboard and the alerts select on these names.
JOBS = ("splitgpt-api", "splitgpt-tokenizer", "splitgpt-coordinator", "splitgpt-node")
# prometheus/alerts.yml in a source checkout (absent from an installed wheel).
REPO_ALERTS = Path(__file__).resolve().parents[3] / "prometheus" / "alerts.yml"


def find_prometheus() -> str | None:
    """The Prometheus server binary: `prometheus` on PATH, else Debian's; None if neither."""
    found = shutil.which("prometheus")
    if found:
        return found
    if DEBIAN_BINARY.is_file() and DEBIAN_BINARY.stat().st_mode & 0o111:
        return str(DEBIAN_BINARY)
    return None


def duration(seconds: float) -> str:
    """A Prometheus duration: 15 -> '15s', 0.5 -> '500ms'."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise ValueError(f"a duration must be positive, not {seconds}")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def local_config(
    targets: Mapping[str, Iterable[str]],
    scrape_interval_s: float = 5.0,
    rules_files: Iterable[str | Path] = (),
    api_key: str | None = None,
) -> dict:
    """The config as a dict: one job per entry of `targets` (job name -> host:port list).

    `api_key`: the API's metrics need one when API keys are set (sent as a Bearer
    token to the `splitgpt-api` job only)."""
    interval = duration(scrape_interval_s)
    scrape_configs = []
    for job, addresses in targets.items():
        addresses = list(addresses)
        if not addresses:
            continue
        job_config: dict = {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": addresses}]}
        if api_key and job == "splitgpt-api":
            job_config["authorization"] = {"type": "Bearer", "credentials": api_key}
        scrape_configs.append(job_config)
    return {
        "global": {
            "scrape_interval": interval,
            # At most the interval (Prometheus refuses a longer timeout), at most 10 s.
            "scrape_timeout": duration(min(scrape_interval_s, 10.0)),
            "evaluation_interval": interval,
            "external_labels": {"stack": "splitgpt-local"},
        },
        "rule_files": [str(Path(f).resolve()) for f in rules_files],
        "scrape_configs": scrape_configs,
    }


def write_local_config(
    dir: str | Path,
    targets: Mapping[str, Iterable[str]],
    scrape_interval_s: float = 5.0,
    rules_files: Iterable[str | Path] = (),
    api_key: str | None = None,
) -> Path:
    """Write `dir`/prometheus.yml (see `local_config`) and return its path.

    Rule files are referenced by absolute path, so the config works from any
    working directory. Mode 0600: it may carry an API key."""
    directory = Path(dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "prometheus.yml"
    text = "# Written by splitgpt.monitoring.local_prometheus: a Prometheus beside a local stack.\n"
    # JSON is YAML too: no YAML library needed at run time.
    text += json.dumps(local_config(targets, scrape_interval_s, rules_files, api_key), indent=2) + "\n"
    # 0600 from its first byte (an older file keeps its mode under touch: set it again)
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text(text)
    return path


def prometheus_argv(
    config_path: str | Path,
    data_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 9090,
    binary: str | None = None,
    retention: str = "1d",
) -> list[str]:
    """The command line of a Prometheus server on `host:port` with its TSDB in `data_dir`.

    Raises FileNotFoundError when no binary is given or found (`apt-get install prometheus`)."""
    exe = binary or find_prometheus()
    if exe is None:
        raise FileNotFoundError("no prometheus binary (Debian: apt-get install prometheus)")
    return [
        exe,
        f"--config.file={Path(config_path).resolve()}",
        f"--storage.tsdb.path={Path(data_dir).resolve()}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address={host}:{port}",
        "--log.level=warn",
    ]
