"""The API's documentation pages, /docs (Swagger UI) and /redoc (ReDoc), with no CDN.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so on a machine without
internet they stay blank. The fastapi-offline package ships those builds (Swagger UI 5,
ReDoc 2, FastAPI's favicon) as package data; the gateway serves them itself, and each
page names only paths on the gateway.

The assets are served under /docs/assets/, inside /docs, so whatever passes /docs on
passes them too: the UI server's proxy (`/docs/{path:path}`), nginx, the ingress and
Vite; and the key check treats them as it treats /docs (a key, once keys are set).

The app must be created with docs_url=None and redoc_url=None, so that FastAPI adds no
pages of its own.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
# fastapi_offline/static/: swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png
ASSETS_PACKAGE = ("fastapi_offline", "static")


def install_offline_docs(app: FastAPI) -> None:
    """Serve /docs, its OAuth2 redirect page and /redoc from assets on the gateway itself."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError(
            "create the app with FastAPI(..., docs_url=None, redoc_url=None): its own /docs and /redoc load from a CDN"
        )
    if app.openapi_url is None:
        return  # nothing to document, as with FastAPI's own pages
    openapi_url = app.openapi_url
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    # Swagger UI's validator badge would send the document to validator.swagger.io; the layout
    # FastAPI uses shows no badge, and with none set it stays off whatever the layout.
    swagger_ui_parameters = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}

    # Checks at start that the package data is there: a missing directory fails here, not at the first page.
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=root + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=swagger_ui_parameters,
        )

    app.add_route(DOCS_URL, swagger_ui, include_in_schema=False)

    if oauth2_redirect_url:

        async def swagger_ui_redirect(request: Request) -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

        app.add_route(oauth2_redirect_url, swagger_ui_redirect, include_in_schema=False)

    async def redoc(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,  # fonts.googleapis.com: the page falls back to the browser's fonts
        )

    app.add_route(REDOC_URL, redoc, include_in_schema=False)


def _root_path(request: Request) -> str:
    """The prefix a proxy serves the app under (uvicorn --root-path), as FastAPI's own pages use it."""
    return request.scope.get("root_path", "").rstrip("/")
