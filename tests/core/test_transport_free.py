"""The core imports no transport: no gRPC, no web framework, no protobuf, no stubs.

Checked twice: statically over every source file (an import inside a function
counts too), and by importing the whole package in a fresh interpreter, which
also catches a transport that arrives through a third-party import.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import splitgpt.core

CORE_DIR = Path(splitgpt.core.__file__).parent
TRANSPORT = ("grpc", "grpc_health", "fastapi", "starlette", "google.protobuf", "splitgpt.rpc")


def _is_transport(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TRANSPORT)


def _imported_modules(path: Path) -> list[str]:
    """Absolute names of everything `path` imports; relative imports resolved against splitgpt.core."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["splitgpt", "core"][: 2 - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]  # `from splitgpt import rpc`
    return names


def test_the_resolver_sees_relative_and_absolute_transport_imports(tmp_path):
    """The check itself: each of these lines must be caught."""
    for line in ("import grpc", "from ..rpc import node_pb2", "from splitgpt import rpc", "from google.protobuf import message"):
        source = tmp_path / "m.py"
        source.write_text(f"def f():\n    {line}\n")
        assert any(_is_transport(m) for m in _imported_modules(source)), line


def test_no_core_source_file_imports_a_transport():
    offenders = {path.name: [m for m in _imported_modules(path) if _is_transport(m)] for path in sorted(CORE_DIR.glob("*.py"))}
    assert len(offenders) > 10  # the glob found the package
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_importing_the_whole_core_loads_no_transport():
    code = f"""
import importlib, json, pkgutil, sys
import splitgpt.core as core
for info in pkgutil.iter_modules(core.__path__):
    importlib.import_module("splitgpt.core." + info.name)
transport = {TRANSPORT!r}
print(json.dumps(sorted(m for m in sys.modules if any(m == t or m.startswith(t + ".") for t in transport))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
