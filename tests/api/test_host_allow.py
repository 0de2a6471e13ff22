"""DNS rebinding: an open gateway on loopback answers only the names a local user types."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from splitgpt.api.app import create_app
from splitgpt.api.settings import ApiSettings
from splitgpt.host_allow import allowed_hosts, host_name

from .error_shape import error_of


def gateway(host: str = "127.0.0.1", **settings) -> TestClient:
    # Nothing listens on port 1: a request past the checks answers 503, not a 400.
    app = create_app(ApiSettings(host=host, tokenizer_address="127.0.0.1:1", coordinator_address="127.0.0.1:1",
                                 rpc_timeout_s=2, **settings))  # fmt: skip
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("path", ["/api/cluster", "/v1/models", "/api/health", "/metrics"])
def test_an_open_gateway_on_loopback_refuses_a_rebound_name_on_every_path(path):
    with gateway() as client:
        r = client.get(path, headers={"Host": "attacker.example:8000"})
        assert r.status_code == 400
        error = error_of(r)
        assert error["type"] == "invalid_host" and "SPLITGPT_API_ALLOWED_HOSTS" in error["message"]
        for local in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
            assert client.get("/api/health", headers={"Host": local}).status_code == 200, local


def test_keys_a_network_address_or_the_setting_lift_the_default():
    with gateway(keys="key-0123456789abcdef") as client:  # the page has no key: 401, whatever the name
        assert client.get("/api/cluster", headers={"Host": "attacker.example"}).status_code == 401
    with gateway(host="0.0.0.0") as client:  # on the network, users name it as they like
        assert client.get("/api/health", headers={"Host": "gpu-box.lan"}).status_code == 200
    with gateway(allowed_hosts="splitgpt.internal, localhost") as client:
        assert client.get("/api/health", headers={"Host": "splitgpt.internal:8000"}).status_code == 200
        assert client.get("/api/health", headers={"Host": "127.0.0.1"}).status_code == 400  # the list is exact
    with gateway(allowed_hosts="*") as client:
        assert client.get("/api/health", headers={"Host": "attacker.example"}).status_code == 200


def test_host_names_are_read_without_ports_and_brackets():
    assert [host_name(h) for h in ("Example.com:80", "[::1]:8000", "::1", "localhost", "")] == [
        "example.com", "::1", "::1", "localhost", ""
    ]  # fmt: skip
    assert allowed_hosts(None, "::1", keys=False) == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts(None, "127.0.0.1", keys=True) is None
    assert allowed_hosts(None, "10.0.0.5", keys=False) is None
    assert allowed_hosts(" A.example ,[::1]", "0.0.0.0", keys=True) == {"a.example", "::1"}
