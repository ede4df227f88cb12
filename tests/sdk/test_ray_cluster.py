"""`shoplens index --engine ray` on a real two-node Ray cluster (head + worker on loopback).

Real everything: `ray start` nodes (tests/sdk/ray_cluster.py), the grocery images, the shipped
embedder bundle, the real service over Milvus Lite files. The import equals the local engine's; a
worker node killed mid-import and a driver killed after it lose nothing and duplicate nothing on
the rerun; a bad --ray-address says why and writes nothing.

Several minutes on a 2-core machine (each import embeds a few hundred images), so they carry the
``ray_cluster`` mark: the default run leaves them out and ``.ci/run`` runs them (``-m ray_cluster``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from lite_index import lite_rows
from live_service import ADMIN_KEY, free_port, live_service
from ray_cluster import RayCluster, start_cluster

pytestmark = [pytest.mark.ray_cluster, pytest.mark.slow]

N_IMAGES = 240  # real grocery shelf photos; plus one exact duplicate and one missing file
SHIPPED = Path(__file__).resolve().parents[2] / "mobile_assets" / "resnet50v2-s3-256"
SUMMARY = re.compile(r"(\d+) imported, (\d+) already indexed \(resumed\), (\d+) exact duplicates, (\d+) failed, of (\d+)")
IMPORT_TIMEOUT_S = 420
CLIENT_IMAGES = 40  # through Ray Client (ray://): the same pipeline, a smaller catalog


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    pytest.importorskip("ray", reason="the ray extra is not installed")
    if not (SHIPPED / "manifest.json").is_file():
        pytest.skip(f"the shipped embedder bundle is missing: {SHIPPED}")
    c = start_cluster(workers=1)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, grocery_dir: Path) -> Path:
    lines = (grocery_dir / "train.txt").read_text().splitlines()[:N_IMAGES]
    rows = [{"product_id": f"p{line.split(',')[1].strip()}", "image": str(grocery_dir / line.split(",")[0].strip())} for line in lines]
    rows.append({**rows[7], "title": "the same bytes again"})  # indexed once, under its first line
    tmp = tmp_path_factory.mktemp("raycat")
    rows.append({"product_id": "ghost", "image": str(tmp / "missing.jpg")})
    cat = tmp / "catalog.jsonl"
    cat.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return cat


def _expected_ids(catalog: Path) -> set[str]:
    """What a complete import holds: the image id (content hash prefix) of every readable image."""
    from shoplens.sdk.importer import image_id_for

    paths = [Path(json.loads(line)["image"]) for line in catalog.read_text().splitlines()]
    return {image_id_for(hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths if p.is_file()}


def _index(catalog: Path, state: Path, *args: str, env: dict[str, str], cluster: RayCluster | None = None) -> tuple[int, int, int, int, int]:
    """`shoplens index` in a subprocess (as a shop would run it); its summary counts."""
    res = subprocess.run([sys.executable, "-m", "shoplens", "index", "--catalog", str(catalog), "--embedder", str(SHIPPED), "--no-detector",
                          "--state", str(state), "--batch-size", "16", "--no-progress", *args],
                         capture_output=True, text=True, timeout=IMPORT_TIMEOUT_S, env={**env, "COLUMNS": "250"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:] + (cluster.log_tails() if cluster else "")
    m = SUMMARY.search(res.stdout.replace("\n", " "))
    assert m, res.stdout
    return tuple(int(g) for g in m.groups())  # type: ignore[return-value]


def _done(state: Path) -> int:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM done").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


def _wait_done(state: Path, proc: subprocess.Popen[bytes], at_least: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while (n := _done(state)) < at_least and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return n


@pytest.fixture(scope="module")
def reference(catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, np.ndarray]]:
    """The local engine's index of the same catalog (a Milvus Lite file written directly)."""
    tmp = tmp_path_factory.mktemp("rayref")
    env = {**os.environ, "SHOPLENS_MILVUS_URI": str(tmp / "local.db")}
    assert _index(catalog, tmp / "state.db", "--engine", "local", env=env) == (N_IMAGES, 0, 1, 1, N_IMAGES + 2)
    return lite_rows(tmp / "local.db")


def _embedding_nodes(cluster: RayCluster) -> int:
    """How many nodes ran the import's embedding actors (the GCS keeps dead actors' records)."""
    return int(cluster.python(f"""
import asyncio
from ray._raylet import GcsClient
gcs = GcsClient(address={cluster.address!r})
loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)  # the client's futures belong to the current loop
actors = loop.run_until_complete(gcs.async_get_all_actor_info(timeout=30))
print(len({{a.address.node_id for a in actors.values() if "_EmbedWriter" in a.class_name}}))
""").strip())


def test_cluster_import_equals_the_local_engine(cluster: RayCluster, catalog: Path, reference: dict[str, tuple[str, np.ndarray]], tmp_path: Path) -> None:
    """Through the service (each embedding actor writes its own batches): the same image ids,
    product ids and vectors (cos >= 0.9999) as the local engine, embedded on both nodes."""
    with live_service(tmp_path / "ray.db") as url:
        counts = _index(catalog, tmp_path / "state.db", "--engine", "ray", "--ray-address", cluster.address, "--workers", "2",
                        "--server", url, "--api-key", ADMIN_KEY, env=cluster.env, cluster=cluster)
    assert counts == (N_IMAGES, 0, 1, 1, N_IMAGES + 2)
    assert _embedding_nodes(cluster) == 2, "the embedding ran on one node only"
    rows = lite_rows(tmp_path / "ray.db")
    assert set(rows) == set(reference) == _expected_ids(catalog)
    for image_id, (product, vec) in rows.items():
        ref_product, ref_vec = reference[image_id]
        assert product == ref_product
        cos = float(vec @ ref_vec / (np.linalg.norm(vec) * np.linalg.norm(ref_vec)))
        assert cos >= 0.9999, f"{image_id}: cos {cos:.6f} to the local engine's vector"


def test_ray_client_address_imports_through_the_heads_client_server(cluster: RayCluster, catalog: Path, reference: dict[str, tuple[str, np.ndarray]], tmp_path: Path) -> None:
    """`--ray-address ray://HOST:PORT` (Ray Client: a driver that is not on a cluster node): the
    pipeline runs in a coordinator actor on the head (Ray Data cannot run through Ray Client), the
    embedding actors write through the service; the rows equal the local engine's."""
    rows_in = catalog.read_text().splitlines()[:CLIENT_IMAGES]
    small = tmp_path / "catalog.jsonl"
    small.write_text("\n".join(rows_in) + "\n")
    with live_service(tmp_path / "client.db") as url:
        counts = _index(small, tmp_path / "state.db", "--engine", "ray", "--ray-address", f"ray://{cluster.host}:{cluster.client_port}",
                        "--workers", "2", "--server", url, "--api-key", ADMIN_KEY, env=cluster.env, cluster=cluster)
    assert counts == (CLIENT_IMAGES, 0, 0, 0, CLIENT_IMAGES)
    rows = lite_rows(tmp_path / "client.db")
    assert set(rows) == _expected_ids(small) and set(rows) <= set(reference)
    for image_id, (product, vec) in rows.items():
        ref_product, ref_vec = reference[image_id]
        assert product == ref_product
        assert float(vec @ ref_vec / (np.linalg.norm(vec) * np.linalg.norm(ref_vec))) >= 0.9999, image_id


def test_worker_node_killed_then_driver_killed_the_rerun_loses_and_duplicates_nothing(cluster: RayCluster, catalog: Path, tmp_path: Path) -> None:
    """Kill the worker node mid-import (`--ray-address auto`, found through RAY_ADDRESS; Ray moves
    the work to the head), then SIGKILL the driver; the rerun (`--ray-address HOST:PORT`) resumes
    from the ledger: it redoes only what was not recorded, and the index holds every image exactly
    once (the Milvus Lite file is written by the driver: one process holds a Lite file)."""
    env = {**cluster.env, "SHOPLENS_MILVUS_URI": str(tmp_path / "kill.db"), "RAY_ADDRESS": cluster.address}
    state = tmp_path / "state.db"
    cmd = [sys.executable, "-m", "shoplens", "index", "--catalog", str(catalog), "--embedder", str(SHIPPED), "--no-detector", "--state", str(state),
           "--batch-size", "16", "--no-progress", "--engine", "ray", "--ray-address", "auto", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        assert _wait_done(state, proc, 32, IMPORT_TIMEOUT_S) >= 32 and proc.poll() is None, "the import ended before the worker node could be killed"
        cluster.workers[-1].kill()  # the node dies like a crashed machine: its actor and its blocks are lost
        at_node_kill = _done(state)
        assert at_node_kill < N_IMAGES, "the import finished before the worker node was killed: make the catalog bigger"
        _wait_done(state, proc, at_node_kill + 32, IMPORT_TIMEOUT_S)  # it goes on on the head
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # and the driver dies too
        proc.wait(timeout=30)
        recorded = _done(state)
        assert at_node_kill < recorded, "nothing was recorded after the worker node died"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    imported, resumed, duplicates, failed, total = _index(catalog, state, "--engine", "ray", "--ray-address", cluster.address, "--workers", "2", env=env, cluster=cluster)
    assert (resumed, imported, duplicates, failed, total) == (recorded, N_IMAGES - recorded, 1, 1, N_IMAGES + 2)
    rows = lite_rows(tmp_path / "kill.db")  # fails on a duplicated image id
    assert set(rows) == _expected_ids(catalog), "lost or extra rows"
    assert _done(state) == N_IMAGES


def test_ray_address_errors_are_clear_and_write_nothing(cluster: RayCluster, catalog: Path, tmp_path: Path) -> None:
    """Unreachable, malformed, a cluster of another Ray version, a cluster that wants a token: one
    clear line, exit 2, and neither the ledger nor the index file exists afterwards."""
    env = {**cluster.env, "SHOPLENS_MILVUS_URI": str(tmp_path / "index.db"), "COLUMNS": "250"}
    state = tmp_path / "state.db"

    def attach(address: str, env: dict[str, str] = env) -> str:
        res = subprocess.run([sys.executable, "-m", "shoplens", "index", "--catalog", str(catalog), "--embedder", str(SHIPPED), "--no-detector",
                              "--state", str(state), "--no-progress", "--engine", "ray", "--ray-address", address],
                             capture_output=True, text=True, timeout=180, env=env)
        assert res.returncode == 2, res.stdout + res.stderr
        assert not state.exists() and not (tmp_path / "index.db").exists(), "a failed attach wrote something"
        return " ".join(res.stdout.split())

    t0 = time.monotonic()
    out = attach(f"127.0.0.1:{free_port()}")
    assert "cannot reach the Ray cluster at 127.0.0.1:" in out and "Connection refused" in out
    assert time.monotonic() - t0 < 60, "an unreachable address must fail fast, not after Ray's minutes of retries"
    assert "expected auto, HOST:PORT" in attach("http://10.0.0.5:6379")
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    assert "requires its auth token" in attach(cluster.address, no_token)

    # A cluster of another Ray version: the head's GCS records the version its nodes run, and Ray
    # checks it on attach; make this head record 2.59.0, as a head started by that release would.
    prelude = f"""
from ray._raylet import GcsClient
from ray._common.usage import usage_constants
from ray._private import ray_constants
gcs = GcsClient(address={cluster.address!r})
key, ns = usage_constants.CLUSTER_METADATA_KEY, ray_constants.KV_NAMESPACE_CLUSTER
"""
    original = cluster.python(prelude + "print(gcs.internal_kv_get(key, namespace=ns).decode())").strip()

    def record(metadata: str) -> None:
        cluster.python(prelude + f"gcs.internal_kv_put(key, {metadata!r}.encode(), True, namespace=ns)")

    try:
        record(json.dumps({**json.loads(original), "ray_version": "2.59.0"}))
        out = attach(cluster.address)
        assert "runs another Ray or Python version" in out and "Ray: 2.59.0" in out, out
    finally:
        record(original)
