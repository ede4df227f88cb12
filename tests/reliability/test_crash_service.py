"""SIGKILL the service in the middle of a bulk upsert stream; restart on the same Lite file.

Every write that was acknowledged (2xx) must be there after the restart, and
nothing half-written may be visible: each visible product has exactly the
images of whole acknowledged-or-not batches, all with readable fields. The
kill takes the service's whole process group, Milvus Lite's server included.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from shoplens.contract import encode_vector

ADMIN = "crash-admin-key-0000000"
MODEL_ID = "crash-64d-0123456789ab"
BATCH = 50


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(db: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "SHOPLENS_MILVUS_URI": str(db), "SHOPLENS_ADMIN_KEYS": f'["{ADMIN}"]', "SHOPLENS_PUBLIC_SEARCH": "true"}
    # own process group: the kill takes Milvus Lite's server process down with the service, as a crash would
    proc = subprocess.Popen([sys.executable, "-m", "shoplens", "serve", "--port", str(port), "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError("service did not start")


def _stream(url: str, acked: list[int], stop: threading.Event, rng: np.random.Generator) -> None:
    """Upsert whole 50-image batches, one product per batch, until stopped or the service dies."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as c:
        for b in range(10_000):
            if stop.is_set():
                return
            images = [{"image_id": f"b{b}-{j}", "product_id": f"batch-{b}", "vector": encode_vector(rng.standard_normal(64), "f32"), "title": f"batch {b}", "price": float(j)} for j in range(BATCH)]
            try:
                r = c.put("/v1/catalog/images", json={"model_id": MODEL_ID, "images": images})
            except httpx.TransportError:
                return  # the service died mid-request: this batch was never acknowledged
            if r.status_code == 200:
                acked.append(b)


def _upserts_beside_flushes(url: str, rounds: int, acked: list[int], rng: np.random.Generator) -> int:
    """One upsert (it creates the collection), then ``rounds`` times an upsert and a flush sent at
    the same moment; returns the flushes answered 200.

    No flush follows the last round: a write that raced a flush stays exposed until the kill."""
    barrier = threading.Barrier(2)
    flushed: list[int] = []

    def flusher() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as c:
            for _ in range(rounds):
                barrier.wait(timeout=60)
                if c.post("/v1/catalog/flush").status_code == 200:
                    flushed.append(1)

    t = threading.Thread(target=flusher)
    t.start()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as c:
        for b in range(rounds + 1):
            images = [{"image_id": f"b{b}-{j}", "product_id": f"batch-{b}", "vector": encode_vector(rng.standard_normal(64), "f32"), "title": f"batch {b}", "price": float(j)} for j in range(BATCH)]
            if b:
                barrier.wait(timeout=60)
            if c.put("/v1/catalog/images", json={"model_id": MODEL_ID, "images": images}).status_code == 200:
                acked.append(b)
    t.join(timeout=60)
    return len(flushed)


def _check_after_restart(url: str, acked: list[int], rng: np.random.Generator) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as c:
        missing = [b for b in acked if c.get(f"/v1/catalog/products/batch-{b}").status_code != 200]
        assert not missing, f"acknowledged batches missing after the restart: {missing}"
        for b in acked:
            images = c.get(f"/v1/catalog/products/batch-{b}").json()["images"]
            assert len(images) == BATCH and {i["image_id"] for i in images} == {f"b{b}-{j}" for j in range(BATCH)}
            assert all(i["title"] == f"batch {b}" for i in images)
        rows = c.get("/v1/stats").json()["rows"]
        # an unacknowledged in-flight batch may or may not have landed, but only whole
        assert rows in (len(acked) * BATCH, (len(acked) + 1) * BATCH), rows
        hits = c.post("/v1/search", json={"model_id": MODEL_ID, "vector": encode_vector(rng.standard_normal(64), "i8"), "top_k": 5}).json()["hits"]
        assert len(hits) == 5 and all(h["product_id"].startswith("batch-") and -1 <= h["score"] <= 1 for h in hits)


@pytest.mark.slow
def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    port = _port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(db, port)
    acked: list[int] = []
    stop = threading.Event()
    rng = np.random.default_rng(0)
    writer = threading.Thread(target=_stream, args=(url, acked, stop, rng))
    writer.start()
    deadline = time.monotonic() + 120
    while len(acked) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-stream: a request is very likely in flight
    proc.wait(timeout=30)
    stop.set()
    writer.join(timeout=60)
    assert len(acked) >= 8

    proc = _start(db, port)
    try:
        _check_after_restart(url, acked, rng)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_writes_acknowledged_beside_flushes_survive_sigkill(tmp_path: Path) -> None:
    """Milvus Lite swaps its WAL at a flush without a lock against a concurrent write; such a write
    was acknowledged and readable, and lost at the kill (benchmarks/soak.py). The store lets writes
    and flushes through one at a time."""
    db = tmp_path / "crash.db"
    port = _port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(db, port)
    acked: list[int] = []
    rng = np.random.default_rng(0)
    flushes = _upserts_beside_flushes(url, 60, acked, rng)
    assert len(acked) == 61 and flushes == 60
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    proc = _start(db, port)
    try:
        _check_after_restart(url, acked, rng)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
