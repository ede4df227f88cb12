"""The real thing: ``shoplens serve`` (uvicorn) in a subprocess on 127.0.0.1, talked to over HTTP.

Also the two process-level promises: the service imports no torch/tensorflow,
and a 2xx write survives the process being killed (SIGKILL, no shutdown hook).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloudkit import ADMIN, ADMIN_H, DEVICE, DEVICE_H, MODEL, free_port, query
from servekit import start_serve as _start, stop_serve as _stop

pytestmark = pytest.mark.slow


@pytest.fixture
def serve_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SHOPLENS_MILVUS_URI=str(tmp_path / "served.db"),
        SHOPLENS_ADMIN_KEYS=f'["{ADMIN}"]',
        SHOPLENS_DEVICE_KEYS=f'["{DEVICE}"]',
        SHOPLENS_COLLECTION="served",
    )
    return env


@pytest.fixture
def server(serve_env, tmp_path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    proc = _start(serve_env, port, tmp_path / "serve.log")
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        _stop(proc)


def test_http_round_trip_and_sigkill_persistence(server, serve_env, catalog, tmp_path):
    url, proc = server
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/v1/health").json()["status"] == "ok"
        r = http.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H)
        assert r.status_code == 200, r.text
        r = http.post("/v1/search", json=query(catalog.centres[5], top_k=4), headers=DEVICE_H)
        assert r.status_code == 200
        before = r.json()["hits"]
        assert before[0]["product_id"] == "prod-5" and len({h["product_id"] for h in before}) == 4
        r = http.post("/v1/search", json=query(catalog.centres[5], filters={"price": 1}), headers=DEVICE_H)
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_filter_field"
        assert http.get("/openapi.json").status_code == 200
        assert "shoplens_http_requests_total" in http.get("/metrics").text

    proc.send_signal(signal.SIGKILL)  # no flush, no shutdown hook: the 2xx must already be durable
    proc.wait(timeout=20)
    port = free_port()
    again = _start(serve_env, port, tmp_path / "serve2.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            r = http.post("/v1/search", json=query(catalog.centres[5], top_k=4), headers=DEVICE_H)
            assert r.status_code == 200
            assert [(h["image_id"], round(h["score"], 5)) for h in r.json()["hits"]] == [
                (h["image_id"], round(h["score"], 5)) for h in before
            ]
            assert http.get("/v1/stats", headers=ADMIN_H).json()["rows"] == len(catalog.images)
    finally:
        _stop(again)


def test_service_process_imports_no_ml_frameworks():
    code = (
        "import sys; from shoplens.cloud.app import create_app; import shoplens.cloud.cli, shoplens.cloud.reindex; "
        "from shoplens.settings import Settings; create_app(Settings()); "
        "bad = sorted(m for m in ('torch', 'tensorflow', 'ultralytics', 'torchvision', 'coremltools') if m in sys.modules); "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"imported: {r.stdout.strip()} {r.stderr[-2000:]}"


def test_reindex_through_a_running_lite_service(server, catalog, tmp_path):
    """`shoplens reindex --url`: the way to re-index a Lite file that a service holds."""
    import json

    import numpy as np

    from shoplens.contract.codecs import encode_vector

    from cloudkit import MODEL_NEXT

    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    rot = np.linalg.qr(np.random.default_rng(3).normal(size=(16, 16)))[0]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(
        json.dumps(dict(img, vector=encode_vector(catalog.vectors[img["image_id"]] @ rot, "f32"))) + "\n"
        for img in catalog.images
    ))
    cmd = [sys.executable, "-m", "shoplens", "reindex", "--url", url, "--admin-key", ADMIN, "--rows", str(rows),
           "--model-id", MODEL_NEXT, "--drop-old"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["rows"] == len(catalog.images) and result["previous_model_id"] == MODEL and result["dropped_previous"]
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/v1/search", json=query(catalog.centres[1]), headers=DEVICE_H)
        assert r.status_code == 410 and r.json()["error"]["details"]["current_model_id"] == MODEL_NEXT  # retired by --drop-old
        r = http.post("/v1/search", json={**query(catalog.centres[1] @ rot), "model_id": MODEL_NEXT}, headers=DEVICE_H)
        assert r.status_code == 200 and r.json()["hits"][0]["product_id"] == "prod-1"
        models = http.get("/v1/models", headers=DEVICE_H).json()["models"]
        assert [(m["model_id"], m["status"]) for m in models] == [(MODEL_NEXT, "current"), (MODEL, "retired")]


def test_workers_refused_on_a_lite_file(serve_env, tmp_path):
    cmd = [sys.executable, "-m", "shoplens", "serve", "--port", str(free_port()), "--workers", "2"]
    res = subprocess.run(cmd, env=serve_env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", res.stderr).split())  # the error panel wraps long paths
    assert "locked to one process" in said and "--workers" in said


@pytest.mark.milvus_server
def test_two_workers_serve_one_milvus_server(milvus_server, serve_env, catalog, tmp_path):
    env = dict(serve_env, SHOPLENS_MILVUS_URI=milvus_server.uri, SHOPLENS_COLLECTION="served_two_workers")
    port = free_port()
    proc = _start(env, port, tmp_path / "serve.log", "--workers", "2")
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.put(f"{base}/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H, timeout=30).status_code == 200
        for i in range(30):  # fresh connections: the kernel spreads them over both processes
            v = catalog.vectors[f"img-{i % 12}-0"]
            r = httpx.post(f"{base}/v1/search", json=query(v, top_k=3), headers=DEVICE_H, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["hits"][0]["product_id"] == f"prod-{i % 12}"  # every worker sees the writes
        import psutil

        workers = {c.pid for c in psutil.Process(proc.pid).children(recursive=True) if "python" in c.name()}
        assert len(workers) >= 2
    finally:
        _stop(proc)
