"""The core imports no metrics library: it reports through core.engine_observer, and the
shells count with prometheus_client (the same two checks as test_transport_free)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.core.test_transport_free import CORE_DIR, _imported_modules

METRICS_LIBRARIES = ("prometheus_client",)


def _is_metrics(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in METRICS_LIBRARIES)


def test_the_check_sees_a_prometheus_import(tmp_path):
    for line in ("import prometheus_client", "from prometheus_client.core import GaugeMetricFamily"):
        source = tmp_path / "m.py"
        source.write_text(f"def f():\n    {line}\n")
        assert any(_is_metrics(m) for m in _imported_modules(source)), line


def test_no_core_source_file_imports_prometheus_client():
    offenders = {path.name: [m for m in _imported_modules(path) if _is_metrics(m)] for path in sorted(CORE_DIR.glob("*.py"))}
    assert "engine_observer.py" in offenders
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_importing_the_whole_core_loads_no_prometheus_client():
    code = """
import importlib, json, pkgutil, sys
import splitgpt.core as core
for info in pkgutil.iter_modules(core.__path__):
    importlib.import_module("splitgpt.core." + info.name)
print(json.dumps(sorted(m for m in sys.modules if m == "prometheus_client" or m.startswith("prometheus_client."))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
