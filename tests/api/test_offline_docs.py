"""/docs and /redoc work offline: every script, style sheet and icon they name is served by
the gateway itself (api/offline_docs.py), none by a CDN."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Match, Route

from splitgpt.api.app import create_app
from splitgpt.api.offline_docs import ASSETS_URL, install_offline_docs
from splitgpt.api.settings import ApiSettings
from splitgpt.ui.server import PROXIED

KEY = "key-docs-0123456789abcdef"
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
PAGES = ("/docs", "/redoc")


class _Urls(HTMLParser):
    """Every src= and href= on a page, and the URLs its inline script and <redoc> load."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.loaded: list[str] = []  # src=, href=: what the browser fetches as the page loads

    def handle_starttag(self, tag, attrs) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.urls.append(value)
                self.loaded.append(value)
            elif name == "spec-url" and value is not None:
                self.urls.append(value)

    def handle_data(self, data: str) -> None:
        # Swagger UI's initializer: `url: '/openapi.json'`, `oauth2RedirectUrl: window.location.origin + '/x'`.
        self.urls += re.findall(r"(?:\burl:|window\.location\.origin \+)\s*'([^']*)'", data)


def urls_of(page: str) -> _Urls:
    parser = _Urls()
    parser.feed(page)
    parser.close()
    return parser


def bare_app() -> FastAPI:
    app = FastAPI(title="t", docs_url=None, redoc_url=None)
    install_offline_docs(app)
    return app


def assert_offline(client: TestClient, path: str, **headers: str) -> list[str]:
    """The page at `path` names only paths on the gateway, and each of its assets loads; returns them."""
    r = client.get(path, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), (path, r.status_code)
    page = r.text
    for outside in ("cdn.", "jsdelivr", "unpkg", "googleapis", "http://", "https://", "//"):
        assert outside not in page, (path, outside)  # `//`: a protocol-relative URL too
    found = urls_of(page)
    assert found.loaded, path
    for url in found.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), (path, url)
    for url in found.loaded:
        asset = client.get(url, headers=headers)
        assert asset.status_code == 200, (url, asset.status_code)
        suffix = url[url.rfind(".") :]
        assert CONTENT_TYPES[suffix] in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert len(asset.content) > 1000, url  # the real build, not a stub
    return found.loaded


@pytest.mark.parametrize("page", PAGES)
def test_the_page_names_only_paths_on_the_gateway_and_each_loads(page):
    with TestClient(bare_app()) as client:
        loaded = assert_offline(client, page)
    scripts = {"/docs": "swagger-ui-bundle.js", "/redoc": "redoc.standalone.js"}
    assert f"{ASSETS_URL}/{scripts[page]}" in loaded
    if page == "/docs":
        assert f"{ASSETS_URL}/swagger-ui.css" in loaded


def test_swagger_ui_points_at_the_document_and_its_oauth2_redirect_page():
    with TestClient(bare_app()) as client:
        found = urls_of(client.get("/docs").text)
        assert "/openapi.json" in found.urls and "/docs/oauth2-redirect" in found.urls
        r = client.get("/docs/oauth2-redirect")
        assert r.status_code == 200 and "swaggerUIRedirectOauth2" in r.text and "http" not in r.text
        assert client.get("/openapi.json").status_code == 200
        assert client.get(f"{ASSETS_URL}/missing.js").status_code == 404
        # The pages and assets are not API routes: the document does not list them.
        assert not [p for p in client.get("/openapi.json").json().get("paths", {}) if p.startswith(("/docs", "/redoc"))]


def test_behind_a_path_prefix_the_pages_name_it():
    """uvicorn --root-path /gw (a proxy serving the gateway under /gw): every URL carries the prefix."""
    with TestClient(bare_app(), root_path="/gw") as client:
        for page in PAGES:
            found = urls_of(client.get(f"/gw{page}").text)
            assert found.urls and all(url.startswith("/gw/") for url in found.urls), found.urls
            for url in found.loaded:
                assert client.get(url).status_code == 200, url


def test_an_app_with_fastapis_own_cdn_pages_is_refused():
    for app in (FastAPI(), FastAPI(redoc_url=None), FastAPI(docs_url=None)):
        with pytest.raises(ValueError, match="docs_url=None, redoc_url=None"):
            install_offline_docs(app)


def test_without_a_document_there_are_no_pages():
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    install_offline_docs(app)
    with TestClient(app) as client:
        assert [client.get(p).status_code for p in ("/docs", "/redoc")] == [404, 404]


def test_the_web_uis_proxy_passes_the_pages_and_their_assets_on():
    """The assets live under /docs/, so the UI server's proxy needs no path of its own for them."""
    routes = [Route(path, lambda request: None) for path in PROXIED]
    with TestClient(bare_app()) as client:
        paths = [*PAGES, "/docs/oauth2-redirect", *(p for page in PAGES for p in urls_of(client.get(page).text).loaded)]
    for path in paths:
        scope = {"type": "http", "path": path, "method": "GET", "root_path": ""}
        assert any(route.matches(scope)[0] == Match.FULL for route in routes), path


def gateway(**settings) -> TestClient:
    # Nothing listens on port 1: no backend is reached by these pages.
    app = create_app(ApiSettings(tokenizer_address="127.0.0.1:1", coordinator_address="127.0.0.1:1", **settings))
    return TestClient(app, raise_server_exceptions=False, base_url="http://localhost")


def test_the_gateways_docs_work_offline_and_need_a_key_like_docs():
    """create_app's pages: offline, and behind the key check exactly as /docs is once keys are set."""
    with gateway() as client:
        for page in PAGES:
            assert_offline(client, page)
    with gateway(keys=KEY) as client:
        for page in PAGES:
            assert client.get(page).status_code == 401, page
            loaded = assert_offline(client, page, **{"X-API-Key": KEY})
            for url in loaded:
                assert client.get(url).status_code == 401, url
