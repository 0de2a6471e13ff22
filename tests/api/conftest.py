from __future__ import annotations

import httpx
import pytest

from splitgpt.bench.local_stack import Stack


@pytest.fixture(scope="session")
def stack(tiny_checkpoint, tmp_path_factory):
    """The whole stack through `splitgpt up`: tokenizer, 3 nodes, coordinator, API."""
    s = Stack(tiny_checkpoint, tmp_path_factory.mktemp("stack"))
    try:
        s.wait_ready()
        yield s
    finally:
        code = s.stop()
        assert code == 0, s.log_path.read_text()[-3000:]


@pytest.fixture
def api(stack):
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client
