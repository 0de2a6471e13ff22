"""The gateway's generation service speaks core types: importing it loads no gRPC and no protobuf stubs.

Checked in a fresh interpreter, so a transport arriving through any import
chain (not only generation.py's own lines) is caught.
"""

from __future__ import annotations

import json
import subprocess
import sys

MODULES = ["splitgpt.api.generation", "splitgpt.api.errors", "splitgpt.api.context_limits", "splitgpt.api.cached_result"]
TRANSPORT = ("grpc", "google.protobuf", "splitgpt.rpc")


def test_the_generation_service_imports_no_transport():
    code = (
        f"import importlib, json, sys\nfor m in {MODULES!r}: importlib.import_module(m)\nprint(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    transport = [m for m in loaded if any(m == t or m.startswith(t + ".") for t in TRANSPORT)]
    assert transport == []
