"""`splitgpt ui`'s server: the built page, a same-origin proxy that streams, and the builder's rules."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from splitgpt.bench.local_stack import free_port_base
from splitgpt.ui.build import ensure_built, needs_build, needs_install
from splitgpt.ui.server import UVICORN_OPTIONS, create_app


class Served:
    """An ASGI app under uvicorn on a free loopback port, in a thread."""

    def __init__(self, app, **options) -> None:
        self.port = free_port_base(1)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class FakeApi:
    """Streams one event, then waits for the test's go before the last; notes when its client leaves."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.client_left = threading.Event()
        self.seen_headers: dict[str, str] = {}
        self.bodies: list[int] = []  # the sizes of the bodies /api/echo read whole

    def app(self) -> Starlette:
        async def stream(request):
            self.seen_headers = dict(request.headers)
            body = await request.json()

            async def events():
                try:
                    yield f'event: token\ndata: {{"text": "{body["text"]}"}}\n\n'
                    while not self.go.is_set():
                        await asyncio.sleep(0.01)
                    yield 'event: done\ndata: {"finish_reason": "length"}\n\n'
                except asyncio.CancelledError:
                    self.client_left.set()
                    raise

            return StreamingResponse(events(), media_type="text/event-stream")

        async def refuse(request):
            return JSONResponse(
                {"error": {"type": "validation_error", "message": "top_p: bad", "param": "top_p"}}, status_code=422
            )

        async def echo(request):
            self.seen_headers = dict(request.headers)
            size = len(await request.body())
            self.bodies.append(size)
            return JSONResponse({"bytes": size})

        return Starlette(
            routes=[Route("/api/model/stream", stream, methods=["POST"]), Route("/api/model/process", refuse, methods=["POST"]),
                    Route("/api/echo", echo, methods=["POST", "GET"])]
        )  # fmt: skip


@pytest.fixture
def dist(tmp_path) -> Path:
    d = tmp_path / "dist"
    d.mkdir()
    (d / "index.html").write_text("<!doctype html><title>splitgpt</title><div id=root></div>")
    return d


def test_events_pass_through_as_they_are_written_and_a_leaving_browser_closes_the_upstream(dist):
    fake = FakeApi()
    with Served(fake.app()) as api_url, Served(create_app(api_url, dist)) as ui_url:
        with (
            httpx.Client(timeout=10) as client,
            client.stream("POST", f"{ui_url}/api/model/stream", json={"text": "hé"}, headers={"x-request-id": "ui-1"}) as r,
        ):
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            first = next(r.iter_raw())
            # the first event arrived while the API is still holding back the rest: nothing buffered
            assert b'event: token\ndata: {"text": "h\xc3\xa9"}' in first
            assert not fake.go.is_set()
        # the browser went away mid-stream: the proxy must hang up on the API too (which cancels the generation)
        assert fake.client_left.wait(5), "the upstream stream was not closed when the client left"
        assert fake.seen_headers["x-request-id"] == "ui-1"
        fake.go.set()


def test_errors_from_the_api_pass_through_with_their_status_and_body(dist):
    fake = FakeApi()
    with Served(fake.app()) as api_url, TestClient(create_app(api_url, dist)) as client:
        r = client.post("/api/model/process", json={"text": "x", "top_p": 2})
        assert r.status_code == 422
        assert r.json()["error"]["param"] == "top_p"


def test_an_unreachable_api_is_a_502_that_says_so(dist):
    closed = f"http://127.0.0.1:{free_port_base(1)}"
    with TestClient(create_app(closed, dist)) as client:
        r = client.get("/api/cluster")
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "api_unreachable"
    assert closed in r.json()["error"]["message"]


def test_the_page_is_served_and_a_missing_build_is_explained(dist, tmp_path):
    with TestClient(create_app("http://127.0.0.1:1", dist)) as client:
        r = client.get("/")
        assert r.status_code == 200 and "<title>splitgpt</title>" in r.text
    problem = "Node.js and npm are needed to build the web UI and were not found"
    with TestClient(create_app("http://127.0.0.1:1", None, problem)) as client:
        r = client.get("/")
        assert r.status_code == 503
        assert problem in r.text and 'href="/docs"' in r.text


def touch(path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path, (mtime, mtime))


def test_the_builder_runs_npm_only_when_its_outputs_are_stale(tmp_path, monkeypatch):
    frontend = tmp_path / "frontend"
    now = time.time()
    touch(frontend / "package.json", now - 100)
    touch(frontend / "package-lock.json", now - 100)
    touch(frontend / "src" / "App.tsx", now - 100)
    assert needs_install(frontend)  # no node_modules
    touch(frontend / "node_modules" / ".package-lock.json", now - 50)
    assert not needs_install(frontend)
    assert needs_build(frontend, frontend / "dist")  # never built
    touch(frontend / "dist" / "index.html", now - 10)
    assert not needs_build(frontend, frontend / "dist")

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no node, no npm
    up_to_date = ensure_built(frontend)
    assert up_to_date.problem is None and up_to_date.dist == frontend / "dist" and not up_to_date.built

    touch(frontend / "src" / "App.tsx", now)  # an edit after the build
    assert needs_build(frontend, frontend / "dist")
    stale = ensure_built(frontend)
    assert "Node.js and npm are needed" in stale.problem and "out of date" in stale.problem
    assert stale.dist == frontend / "dist"  # the last build is still served

    (frontend / "dist" / "index.html").unlink()
    missing = ensure_built(frontend)
    assert missing.dist is None and "Node.js and npm are needed" in missing.problem


def test_the_builder_names_a_node_too_old_for_vite(tmp_path, monkeypatch):
    frontend = tmp_path / "frontend"
    for name in ("package.json", "package-lock.json", "src/main.tsx"):
        touch(frontend / name, time.time())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, script in (("node", "echo v18.19.0"), ("npm", "echo npm must not run; exit 1")):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    result = ensure_built(frontend)
    assert result.dist is None
    assert result.problem == "the web UI needs Node.js 20.19+ (Vite 8) and found 18.19"


def raw_status(url: str, request_line: str) -> int:
    """The status of a request sent as written: HTTP clients fold `..` before sending."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"{request_line}\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return int(conn.recv(4096).split(b" ")[1])


def test_the_proxy_streams_bodies_up_to_the_limit_and_refuses_larger_ones_with_413(dist):
    fake = FakeApi()
    with Served(fake.app()) as api_url, Served(create_app(api_url, dist, max_body_bytes=1000)) as ui_url:
        with httpx.Client(base_url=ui_url, timeout=10) as client:
            assert client.post("/api/echo", content=b"x" * 1000).json() == {"bytes": 1000}
            declared = client.post("/api/echo", content=b"x" * 1001)  # Content-Length says so: refused unread
            assert declared.status_code == 413 and declared.json()["error"]["type"] == "request_too_large"
            chunked = client.post("/api/echo", content=iter([b"x" * 600, b"x" * 600]))  # no length: counted as it streams
            assert chunked.status_code == 413 and "1000 bytes" in chunked.json()["error"]["message"]
            assert fake.bodies == [1000], "the API never received an oversized body whole"
            assert client.post("/api/echo", content=iter([b"x" * 400, b"x" * 400])).json() == {"bytes": 800}


def test_the_proxy_says_who_the_client_is_and_drops_what_the_client_claims(dist):
    fake = FakeApi()
    with Served(fake.app()) as api_url, Served(create_app(api_url, dist), **UVICORN_OPTIONS) as ui_url:
        claimed = {"X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9", "X-Real-IP": "203.0.113.9",
                   "X-Forwarded-Proto": "https"}  # fmt: skip
        assert httpx.get(f"{ui_url}/api/echo", headers=claimed, timeout=10).status_code == 200
        assert fake.seen_headers["x-forwarded-for"] == "127.0.0.1"
        assert "203.0.113.9" not in str(fake.seen_headers) and "x-forwarded-proto" not in fake.seen_headers


def test_the_proxy_refuses_dot_segments_instead_of_folding_them(dist):
    fake = FakeApi()
    with Served(fake.app()) as api_url, Served(create_app(api_url, dist)) as ui_url:
        assert raw_status(ui_url, "GET /api/echo HTTP/1.1") == 200
        for path in ("/api/../api/echo", "/api/%2e%2e/api/echo", "/v1/./models", "/api/x/.."):
            assert raw_status(ui_url, f"GET {path} HTTP/1.1") == 400, path


def test_the_ui_on_loopback_answers_only_local_names(dist):
    from splitgpt.host_allow import allowed_hosts

    fake = FakeApi()
    local_only = allowed_hosts(None, "127.0.0.1", keys=False)
    with Served(fake.app()) as api_url, Served(create_app(api_url, dist, allowed=local_only)) as ui_url:
        rebound = httpx.get(f"{ui_url}/api/echo", headers={"Host": "attacker.example:5173"}, timeout=10)
        assert rebound.status_code == 400 and rebound.json()["error"]["type"] == "invalid_host"
        assert "SPLITGPT_UI_ALLOWED_HOSTS" in rebound.json()["error"]["message"]
        assert fake.bodies == [], "nothing reached the API"
        assert httpx.get(f"{ui_url}/", timeout=10).status_code == 200
        assert httpx.get(f"{ui_url}/api/echo", headers={"Host": "localhost:5173"}, timeout=10).status_code == 200
