"""The very first requests after a start: several at once, on an existing catalog, over real uvicorn.

Each round starts ``shoplens serve`` on a catalog that already exists and, as
soon as the process answers, fires barrier-synchronised first searches and
first upserts. Every answer must be a 200 or a 503 with Retry-After (never a
500, never a hang), every acknowledged row must be readable afterwards and
after the next restart, and SIGTERM must end the process within a bounded time.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shoplens.contract.codecs import encode_vector
from shoplens.settings import Settings

from cloudkit import ADMIN, ADMIN_H, DEVICE, DEVICE_H, DIM, MODEL, free_port, query
from servekit import start_serve, stop_serve

pytestmark = pytest.mark.slow

ROUNDS = 4
SEARCHERS = 3
WRITERS = 4
ROWS_PER_WRITE = 50
BULK_ROWS = 8000
#: SIGTERM must end the service within this many seconds, loaded or not
SHUTDOWN_S = 15.0


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SHOPLENS_MILVUS_URI=settings.resolved_milvus_uri(),
        SHOPLENS_COLLECTION=settings.collection,
        SHOPLENS_ADMIN_KEYS=json.dumps([ADMIN]),
        SHOPLENS_DEVICE_KEYS=json.dumps([DEVICE]),
        SHOPLENS_CACHE_DIR=str(settings.cache_dir),
        SHOPLENS_INDEX_PARAMS=json.dumps(settings.index_params),
    )
    return env


def _rows(tag: str, centre: np.ndarray, rng: np.random.Generator) -> list[dict[str, Any]]:
    out = []
    for i in range(ROWS_PER_WRITE):
        v = centre + 0.1 * rng.normal(size=centre.shape)
        v /= np.linalg.norm(v)
        out.append({"image_id": f"{tag}-{i}", "product_id": tag, "vector": encode_vector(v, "f32"), "encoding": "f32"})
    return out


def _bulk(batch: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    x = rng.normal(size=(1000, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [{"image_id": f"bulk-{batch}-{i}", "product_id": f"bulk-{batch}-{i // 10}", "vector": encode_vector(v, "f32"),
             "encoding": "f32"} for i, v in enumerate(x)]


def _acceptable(r: httpx.Response) -> bool:
    """A 200, or a 503 that tells the client when to retry (nothing acknowledged)."""
    return r.status_code == 200 or (r.status_code == 503 and "retry-after" in r.headers)


def test_concurrent_first_requests_after_each_restart_lose_nothing(backend, catalog, tmp_path: Path) -> None:
    kind, make_settings = backend
    env = _env(make_settings())
    rng = np.random.default_rng(7)
    log = tmp_path / "serve.log"

    port = free_port()
    proc = start_serve(env, port, log)
    try:
        r = httpx.put(f"http://127.0.0.1:{port}/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H, timeout=60)
        assert r.status_code == 200, r.text
        for b in range(BULK_ROWS // 1000):  # a catalog big enough that loading it takes a while
            r = httpx.put(f"http://127.0.0.1:{port}/v1/catalog/images", headers=ADMIN_H, timeout=60,
                          json={"model_id": MODEL, "images": _bulk(b, rng)})
            assert r.status_code == 200, r.text
    finally:
        assert stop_serve(proc) is not None, "SIGTERM did not stop an idle service"

    acknowledged: list[str] = []  # product ids whose 50-row upsert answered 200
    for round_no in range(ROUNDS):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_serve(env, port, log, "--log-level", "info", wait_for="/v1/health")
        try:
            barrier = threading.Barrier(SEARCHERS + WRITERS)
            bodies = {w: {"model_id": MODEL, "images": _rows(f"race-{round_no}-{w}", catalog.centres[w], rng)} for w in range(WRITERS)}

            def first_request(i: int) -> tuple[str, httpx.Response]:
                with httpx.Client(base_url=base, timeout=60) as http:
                    http.get("/v1/health")  # connection open before the barrier: the requests really overlap
                    barrier.wait(timeout=30)
                    if i < SEARCHERS:
                        return "search", http.post("/v1/search", json=query(catalog.centres[i], top_k=3), headers=DEVICE_H)
                    w = i - SEARCHERS
                    return f"race-{round_no}-{w}", http.put("/v1/catalog/images", json=bodies[w], headers=ADMIN_H)

            with ThreadPoolExecutor(SEARCHERS + WRITERS) as pool:
                answers = list(pool.map(first_request, range(SEARCHERS + WRITERS)))
            for what, r in answers:
                assert _acceptable(r), f"round {round_no} {what}: {r.status_code} {r.text[:300]}"
                if what != "search" and r.status_code == 200:
                    assert r.json()["upserted"] == ROWS_PER_WRITE
                    acknowledged.append(what)

            with httpx.Client(base_url=base, timeout=60) as http:
                r = http.post("/v1/search", json=query(catalog.centres[3], top_k=3), headers=DEVICE_H)
                assert r.status_code == 200, f"round {round_no}: search after the first requests: {r.status_code} {r.text[:300]}"
                for pid in acknowledged:
                    r = http.get(f"/v1/catalog/products/{pid}", headers=DEVICE_H)
                    assert r.status_code == 200 and len(r.json()["images"]) == ROWS_PER_WRITE, (
                        f"round {round_no}: acknowledged product {pid}: {r.status_code} {r.text[:200]}")
        finally:
            took = stop_serve(proc, wait_s=SHUTDOWN_S)
        assert took is not None, f"round {round_no}: SIGTERM did not stop the service within {SHUTDOWN_S:g} s"

    assert acknowledged, "no first upsert was ever acknowledged: the test proved nothing"
    port = free_port()
    proc = start_serve(env, port, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            rows = http.get("/v1/stats", headers=ADMIN_H).json()["rows"]
            assert rows == len(catalog.images) + BULK_ROWS + ROWS_PER_WRITE * len(acknowledged)
            for pid in acknowledged:
                r = http.get(f"/v1/catalog/products/{pid}", headers=DEVICE_H)
                assert r.status_code == 200 and len(r.json()["images"]) == ROWS_PER_WRITE, f"after the last restart, {pid}: {r.text[:300]}"
    finally:
        stop_serve(proc)
