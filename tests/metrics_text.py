"""Reading Prometheus text in tests: scrape a /metrics, look samples up, run promtool on it."""

from __future__ import annotations

import subprocess

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import require

# What every splitgpt process exports besides its own families (docs/metrics.md).
PROCESS_FAMILIES = {
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "python_info",
    "python_gc_collections_total",
    "splitgpt_service_info",
}


class Scrape:
    """One scrape: `families` (name -> type) and samples by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            # The parser names a counter's family without `_total`; the contract names it with.
            name = family.name + "_total" if family.type == "counter" else family.name
            self.families[name] = family.type
            self.samples += [(s.name, s.labels, s.value) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels` (0 if none)."""
        return sum(v for n, ls, v in self.samples if n == name and labels.items() <= ls.items())

    def labelsets(self, name: str) -> list[dict[str, str]]:
        return [ls for n, ls, _ in self.samples if n == name]


def scrape(url: str, headers: dict[str, str] | None = None) -> Scrape:
    r = httpx.get(url, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    return Scrape(r.text)


def promtool_check_metrics(text: str) -> None:
    """`promtool check metrics` (the exposition lint): exit 0 and no complaint."""
    out = subprocess.run(
        [require("promtool", "prometheus"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr
