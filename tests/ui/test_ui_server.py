"""`splitgpt ui`'s server: the built page, a same-origin proxy that streams, and the builder's rules."""

from __future__ import annotations

import asyncio
import os
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
from splitgpt.ui.server import create_app


class Served:
    """An ASGI app under uvicorn on a free loopback port, in a thread."""

    def __init__(self, app) -> None:
        self.port = free_port_base(1)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
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

        return Starlette(
            routes=[Route("/api/model/stream", stream, methods=["POST"]), Route("/api/model/process", refuse, methods=["POST"])]
        )


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
