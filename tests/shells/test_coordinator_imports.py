"""The coordinator process loads no model code.

It speaks to nodes through core.node_contract only; transformers, the
safetensors reader and the node's model modules belong to the nodes (and
cost the coordinator seconds of start-up and hundreds of MB if they leak in).
"""

from __future__ import annotations

import json
import subprocess
import sys

MODEL_CODE = (
    "transformers",
    "safetensors",
    "splitgpt.core.gpt2_partition",
    "splitgpt.core.checkpoint",
    "splitgpt.core.linear_kernels",
    "splitgpt.core.kv_cache",
    "splitgpt.core.node_engine",
    "splitgpt.core.tiny_model",
)


def loaded_after_importing(module: str) -> list[str]:
    code = f"""
import importlib, json, sys
importlib.import_module({module!r})
banned = {MODEL_CODE!r}
print(json.dumps(sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in banned))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_coordinator_service_imports_no_model_code():
    assert loaded_after_importing("splitgpt.shells.coordinator_service") == []


def test_the_check_sees_model_code_where_it_is():
    """The node service does load it: the check above can fail."""
    loaded = loaded_after_importing("splitgpt.shells.node_service")
    assert {"transformers", "splitgpt.core.kv_cache", "splitgpt.core.gpt2_partition"} <= set(loaded)
