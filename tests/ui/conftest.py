"""The web UI's tests need Node and npm (and, for the browser test, Debian's chromium)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from splitgpt.core.tiny_model import write_checkpoint
from splitgpt.ui.build import ensure_built

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
CHROMIUM = "/usr/bin/chromium"


def missing(what: str) -> None:
    """Skip, or fail where CI says every real tool must be there."""
    if os.environ.get("SPLITGPT_REQUIRE_REAL_SERVICES") == "1":
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope="session")
def npm() -> str:
    found = shutil.which("npm")
    if found is None or shutil.which("node") is None:
        missing("Node.js and npm are not installed (apt-get install nodejs npm)")
    return found


@pytest.fixture(scope="session")
def built_frontend(npm) -> Path:
    """npm ci and vite build, each only when stale (the builder `splitgpt up` uses)."""
    result = ensure_built(FRONTEND)
    assert result.problem is None, result.problem
    return result.dist


@pytest.fixture(scope="session")
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="session")
def long_context_checkpoint(tmp_path_factory) -> Path:
    """Like tiny_checkpoint, with GPT-2's 1024 positions: room for a generation long enough to Stop."""
    # named as `make up-tiny`'s, which the page's header shows
    return write_checkpoint(tmp_path_factory.mktemp("ui") / "tiny-gpt2", n_layer=6, n_embd=64, n_head=4, n_positions=1024, seed=1)
