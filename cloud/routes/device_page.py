"""A browser device at ``/app``: the phone's flow in a web page, served by the search service itself.

The page (``cloud/static/app/``) runs the shipped TFLite detector and embedder in
the browser with LiteRT.js (WebAssembly), encodes each vector ``i8`` as the
contract says and calls ``/v1/search/batch`` on the same origin (no CORS
opening). The photo never leaves the page: its Content-Security-Policy allows
connections to this origin only, and the only POST the page makes carries the
model id, the encoding, the vectors and ``top_k``.

Everything it loads is served from here: the page, LiteRT.js and its WASM
(``cloud/static/vendor/``, package data: no CDN at run time) and the bundles'
``manifest.json`` + TFLite artifacts from the folder ``SHOPLENS_APP_BUNDLES``
(default: the checkout's ``mobile_assets/``). ``install(app)`` also points
``/docs`` at the locally served Swagger UI instead of a CDN.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

from shoplens.contract.manifest import ArtifactFormat, ManifestError, Task, load_manifest
from shoplens.settings import REPO_ROOT

STATIC = Path(__file__).resolve().parent.parent / "static"
APP_DIR = STATIC / "app"
VENDOR_DIR = STATIC / "vendor"

#: the photo stays in the page: scripts, WASM, models and API calls from this origin only;
#: catalog thumbnails are the hits' https image_urls (GETs that carry nothing from the photo)
CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; "
    "img-src 'self' blob: data: https:; style-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".css": "text/css",
          ".html": "text/html; charset=utf-8", ".json": "application/json", ".png": "image/png",
          ".tflite": "application/octet-stream", ".svg": "image/svg+xml"}

router = APIRouter(tags=["device page"], include_in_schema=False)


def bundles_dir() -> Path | None:
    """Where the page's bundles come from: ``SHOPLENS_APP_BUNDLES``, else the checkout's ``mobile_assets/``."""
    env = os.environ.get("SHOPLENS_APP_BUNDLES")
    if env:
        return Path(env)
    if REPO_ROOT is not None and (REPO_ROOT / "mobile_assets").is_dir():
        return REPO_ROOT / "mobile_assets"
    return None


@lru_cache(maxsize=4)
def _bundles(root: str) -> dict[str, Any]:
    """The detector and embedder the SDK would pick from ``root`` (one each), with the TFLite artifact it runs."""
    found: dict[str, Any] = {}
    for manifest_file in sorted(Path(root).glob("*/manifest.json")):
        try:
            manifest = load_manifest(manifest_file.parent)
            artifact = manifest.artifact(ArtifactFormat.TFLITE)
        except ManifestError:
            continue
        key = "embedder" if manifest.task is Task.EMBEDDER else "detector"
        if key in found:
            raise HTTPException(500, f"{root} holds more than one {key} bundle")
        found[key] = {
            "bundle": manifest_file.parent.name,
            "file": artifact.file,
            "url": f"/app/models/{manifest_file.parent.name}/{artifact.file}",
            "manifest": manifest.model_dump(mode="json"),  # validated, with the defaults of keys an older manifest lacks (object_choice)
        }
    return found


def _inside(base: Path, rel: str) -> Path:
    path = (base / rel).resolve()
    if base.resolve() not in path.parents or not path.is_file():
        raise HTTPException(404, "not found")
    return path


def _file(path: Path, *, cache: str = "no-cache") -> FileResponse:
    return FileResponse(path, media_type=_TYPES.get(path.suffix, "application/octet-stream"),
                        headers={**_HEADERS, "Cache-Control": cache})


@router.get("/app", response_class=HTMLResponse)
def app_page() -> FileResponse:
    """The browser device page."""
    return _file(APP_DIR / "index.html")


@router.get("/app/")
def app_page_slash() -> RedirectResponse:
    return RedirectResponse("/app", status_code=308)


@router.get("/app/models.json")
def app_models() -> JSONResponse:
    """The detector and embedder the page runs: manifest + artifact URL of each (the SDK's choice of artifact)."""
    root = bundles_dir()
    found = _bundles(str(root)) if root is not None and root.is_dir() else {}
    if "embedder" not in found:
        raise HTTPException(404, "no embedder bundle to serve: set SHOPLENS_APP_BUNDLES to a folder like mobile_assets/")
    return JSONResponse(found, headers=_HEADERS)


@router.get("/app/models/{bundle}/{file}")
def app_model_file(bundle: str, file: str) -> FileResponse:
    """Only the artifacts listed by ``/app/models.json`` are served (never another file of the folder)."""
    root = bundles_dir()
    found = _bundles(str(root)) if root is not None and root.is_dir() else {}
    for entry in found.values():
        if entry["bundle"] == bundle and entry["file"] == file:
            return _file(_inside(root, f"{bundle}/{file}"), cache="public, max-age=3600")  # type: ignore[arg-type]
    raise HTTPException(404, "not found")


@router.get("/app/static/{path:path}")
def app_static(path: str) -> FileResponse:
    """The page's own files and the vendored LiteRT.js / Swagger UI (package data)."""
    if path.startswith("vendor/"):
        return _file(_inside(VENDOR_DIR, path[len("vendor/"):]), cache="public, max-age=86400")
    return _file(_inside(APP_DIR, path))


def _local_docs(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - Swagger UI",
        swagger_js_url="/app/static/vendor/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url="/app/static/vendor/swagger-ui/swagger-ui.css",
        swagger_favicon_url="/app/static/vendor/swagger-ui/favicon-32x32.png",
    )


def install(app: FastAPI) -> None:
    """Mount the page and serve ``/docs`` with the vendored Swagger UI (no CDN)."""
    app.include_router(router)
    if app.docs_url:
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != app.docs_url]
        app.add_api_route(app.docs_url, _local_docs, include_in_schema=False, response_class=HTMLResponse)
    # ReDoc would load from a CDN too; it is not offered
    if app.redoc_url:
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != app.redoc_url]
