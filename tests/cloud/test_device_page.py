"""The /app device page's routes: what is served, with which headers, and nothing else (no browser here;
tests/e2e/test_browser_device.py runs the page in Chromium)."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "cloud" / "static"


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from shoplens.cloud.app import create_app
    from shoplens.cloud.routes import device_page
    from shoplens.settings import Settings

    monkeypatch.setenv("SHOPLENS_APP_BUNDLES", str(ROOT / "mobile_assets"))
    device_page._bundles.cache_clear()
    # no lifespan: these routes touch neither Milvus nor the service state
    return TestClient(create_app(Settings(milvus_uri=str(tmp_path / "c.db"))))


def test_page_and_its_assets_are_served_from_this_origin(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/app")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "connect-src 'self'" in csp and "default-src 'self'" in csp and "unsafe-eval" not in csp.replace("wasm-unsafe-eval", "")
    for src in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert src.startswith("/app/static/"), src
        assert client.get(src).status_code == 200
    js = client.get("/app/static/app.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert client.get("/app/static/vendor/litertjs/wasm/litert_wasm_internal.wasm").headers["content-type"] == "application/wasm"
    for script in (STATIC / "app").glob("*.js"):
        assert "http://" not in script.read_text() and "https://" not in script.read_text().replace('startsWith("https://")', ""), script.name


def test_models_json_names_the_sdks_artifacts_and_only_those_are_served(client) -> None:  # type: ignore[no-untyped-def]
    from shoplens.contract.manifest import load_manifest

    info = client.get("/app/models.json").json()
    for key, bundle in (("detector", "yolov8n"), ("embedder", "resnet50v2-s3-256")):
        artifact = load_manifest(ROOT / "mobile_assets" / bundle).artifact("tflite")  # the SDK's choice
        assert info[key]["bundle"] == bundle and info[key]["file"] == artifact.file
        got = client.get(info[key]["url"])
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == artifact.sha256
    assert info["embedder"]["manifest"]["embedder"]["model_id"].startswith("resnet50v2")
    for path in ("/app/models/yolov8n/manifest.json", "/app/models/yolov8n/yolov8n_int8.parity.md",
                 "/app/models/yolov8n/yolov8n_fp32.tflite", "/app/static/../routes/device_page.py",
                 "/app/static/vendor/../../app.py", "/app/static/%2e%2e/%2e%2e/app.py", "/app/static/vendor/VENDOR.md.nope"):
        assert client.get(path).status_code == 404, path


def test_docs_use_the_vendored_swagger_ui(client) -> None:  # type: ignore[no-untyped-def]
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn.jsdelivr" not in docs.text and "/app/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert client.get("/app/static/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
    assert client.get("/redoc").status_code == 404
    assert "/app" not in client.get("/openapi.json").json()["paths"]


def test_vendored_files_match_vendor_md_and_are_package_data() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    from fnmatch import fnmatch

    listed = dict((path, digest) for digest, path in re.findall(r"^([0-9a-f]{64})  (\S+)$", (STATIC / "vendor" / "VENDOR.md").read_text(), flags=re.M))
    files = {p.relative_to(STATIC / "vendor").as_posix(): p for p in (STATIC / "vendor").rglob("*") if p.is_file() and p.name != "VENDOR.md"}
    assert set(listed) == set(files)
    for rel, path in files.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == listed[rel], rel
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["shoplens.cloud"]
    for p in STATIC.rglob("*"):
        if p.is_file() and "__pycache__" not in p.parts:
            rel = p.relative_to(ROOT / "cloud").as_posix()
            assert any(fnmatch(rel, pat) and rel.count("/") == pat.count("/") for pat in patterns), f"{rel} is not package data"
