from __future__ import annotations

import httpx
import openai
import pytest

from splitgpt.bench.local_stack import Stack
from tests.servers import running


@pytest.fixture(scope="session")
def stack(tiny_checkpoint, tmp_path_factory):
    """The whole stack through `splitgpt up`: tokenizer, 3 nodes, coordinator, API."""
    # Prefix reuse on (it is off by default), so every exactness check here runs with it.
    env = {"SPLITGPT_COORDINATOR_PREFIX_CACHE": "true"}
    with running(Stack(tiny_checkpoint, tmp_path_factory.mktemp("stack"), env=env)) as s:
        yield s


@pytest.fixture
def api(stack):
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def gateway(stack):
    """The gateway app in this process (FastAPI's TestClient), over the stack's real
    tokenizer and coordinator: thousands of requests cost no HTTP round trips."""
    from fastapi.testclient import TestClient

    from splitgpt.api.app import create_app
    from splitgpt.api.settings import ApiSettings

    settings = ApiSettings(
        tokenizer_address=f"127.0.0.1:{stack.grpc_base + 1}",
        coordinator_address=f"127.0.0.1:{stack.grpc_base}",
        internal_token=stack.internal_token,
    )
    # raise_server_exceptions=False: a bug must show as the 500 a client would get, not as a test error.
    with TestClient(create_app(settings), raise_server_exceptions=False, base_url="http://localhost") as client:
        yield client


@pytest.fixture(scope="module")
def client(stack):
    """The official OpenAI client against the stack's /v1."""
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id
