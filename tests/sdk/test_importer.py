"""Catalog import: real bundle, real Milvus Lite file, bad files reported, resume without duplicates."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from shoplens.sdk.catalog import CatalogError, read_catalog
from shoplens.sdk.importer import import_catalog, image_id_for



def _iconic(grocery_dir: Path, n: int) -> list[tuple[str, Path]]:
    rows = list(csv.DictReader((grocery_dir / "classes.csv").open()))[:n]
    return [(r["Class Name (str)"], grocery_dir / r["Iconic Image Path (str)"].lstrip("/")) for r in rows]


def _write_catalog(tmp: Path, grocery_dir: Path, n: int = 12) -> Path:
    items = _iconic(grocery_dir, n)
    (tmp / "broken.jpg").write_bytes(items[0][1].read_bytes()[:500])
    lines = [{"product_id": pid, "image": str(path), "title": pid, "category": "grocery", "price": 1.5 + i, "brand": "acme"} for i, (pid, path) in enumerate(items)]
    lines.append({"product_id": items[0][0], "image": str(items[0][1]), "title": "same bytes again"})  # exact duplicate
    lines.append({"product_id": "ghost", "image": str(tmp / "missing.jpg")})
    lines.append({"product_id": "broken", "image": "broken.jpg"})  # relative to the catalog file
    cat = tmp / "catalog.jsonl"
    cat.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return cat


class ListSink:
    """Keeps acknowledged writes in memory, keyed like the index (upsert by image id)."""

    def __init__(self, model_id: str, fail_after: int | None = None) -> None:
        self.model_id = model_id
        self.rows: dict[str, object] = {}
        self.calls = 0
        self.fail_after = fail_after

    def upsert(self, images) -> None:  # type: ignore[no-untyped-def]
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash before the write was acknowledged")
        self.calls += 1
        for img in images:
            self.rows[img.image_id] = img


def test_catalog_readers(tmp_path: Path, grocery_dir: Path) -> None:
    cat = _write_catalog(tmp_path, grocery_dir, 3)
    entries = list(read_catalog(cat))
    assert entries[0].attributes == {"brand": "acme"} and entries[0].price == 1.5
    assert entries[-1].image == str(tmp_path / "broken.jpg")
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("product_id,image,price,colour\np1,a.jpg,2.5,red\n")
    (e,) = read_catalog(csv_path)
    assert e.attributes == {"colour": "red"} and e.image == str(tmp_path / "a.jpg")
    csv_path.write_text("product_id,image,price\np1,a.jpg,cheap\n")
    with pytest.raises(CatalogError, match="line 2: price"):
        list(read_catalog(csv_path))
    (tmp_path / "bad.jsonl").write_text('{"product_id": "x"}\n')
    with pytest.raises(CatalogError, match="product_id and image are required"):
        list(read_catalog(tmp_path / "bad.jsonl"))


def test_import_reports_bad_files_and_skips_duplicates(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    from shoplens.contract.manifest import load_manifest

    mid = load_manifest(mobilenet_bundle).embedder.model_id
    cat = _write_catalog(tmp_path, grocery_dir, 12)
    sink = ListSink(mid)
    s = import_catalog(read_catalog(cat), embedder=mobilenet_bundle, detector=None, sink=sink, state_path=tmp_path / "state.db", batch_size=5, progress=False)
    assert (s.total, s.imported, s.duplicates, len(s.failed)) == (15, 12, 1, 2)
    reasons = dict(s.failed)
    assert "not found" in reasons[str(tmp_path / "missing.jpg")] and "corrupt" in reasons[str(tmp_path / "broken.jpg")]
    assert len(sink.rows) == 12
    first = next(iter(sink.rows.values()))
    assert first.encoding.value == "f32" and first.category == "grocery" and first.attributes == {"brand": "acme"}

    again = import_catalog(read_catalog(cat), embedder=mobilenet_bundle, detector=None, sink=sink, state_path=tmp_path / "state.db", batch_size=5, progress=False)
    assert (again.imported, again.already_done) == (0, 12), "a rerun must redo nothing"


def test_crash_mid_import_then_resume_equals_clean_run(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    from shoplens.contract.codecs import decode_vector
    from shoplens.contract.manifest import load_manifest

    mid = load_manifest(mobilenet_bundle).embedder.model_id
    cat = _write_catalog(tmp_path, grocery_dir, 12)
    crashing = ListSink(mid, fail_after=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        import_catalog(read_catalog(cat), embedder=mobilenet_bundle, detector=None, sink=crashing, state_path=tmp_path / "s.db", batch_size=4, progress=False)
    assert len(crashing.rows) == 4
    crashing.fail_after = None
    resumed = import_catalog(read_catalog(cat), embedder=mobilenet_bundle, detector=None, sink=crashing, state_path=tmp_path / "s.db", batch_size=4, progress=False)
    assert resumed.already_done == 4 and resumed.imported == 8

    clean = ListSink(mid)
    import_catalog(read_catalog(cat), embedder=mobilenet_bundle, detector=None, sink=clean, state_path=tmp_path / "clean.db", batch_size=4, progress=False)
    assert set(crashing.rows) == set(clean.rows)
    for k in clean.rows:
        a, b = (decode_vector(r.rows[k].vector, "f32", 1024) for r in (crashing, clean))
        assert np.allclose(a, b, atol=1e-6)


def test_index_without_server_writes_through_the_clouds_milvus_sink(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    """`shoplens index` without --server: the root CLI hands the sdk's command the cloud's MilvusSink
    (the sdk does not import the cloud); the rows land in the Lite file the service would read."""
    import subprocess
    import sys

    from shoplens.cloud.store import CatalogStore
    from shoplens.contract.manifest import load_manifest
    from shoplens.settings import Settings

    cat = _write_catalog(tmp_path, grocery_dir, 4)
    env = {**os.environ, "SHOPLENS_MILVUS_URI": str(tmp_path / "direct.db"), "SHOPLENS_COLLECTION": "direct"}
    res = subprocess.run([sys.executable, "-m", "shoplens", "index", "--catalog", str(cat), "--embedder", str(mobilenet_bundle), "--no-detector",
                          "--state", str(tmp_path / "s.db"), "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 imported" in res.stdout
    store = CatalogStore(Settings(milvus_uri=str(tmp_path / "direct.db"), collection="direct"))
    try:
        binding = store.binding(refresh=True)
        assert binding is not None and binding.model_id == load_manifest(mobilenet_bundle).embedder.model_id
        assert store.count(binding) == 4
    finally:
        store.close()


@pytest.mark.slow
def test_index_writes_every_served_model_in_one_pass_and_resumes_per_model(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    """During a rollout two models are served: `shoplens index --bundle A --bundle B` reads and detects
    each image once and writes each model's vector to that model's collection; a rerun redoes nothing,
    and a ledger missing one model redoes that model only."""
    import sqlite3
    import subprocess
    import sys

    from shoplens.cloud.store import CatalogStore
    from shoplens.contract.manifest import load_manifest
    from shoplens.settings import Settings

    shipped = Path(__file__).resolve().parents[2] / "mobile_assets" / "resnet50v2-s3-256"
    ids = [load_manifest(b).embedder.model_id for b in (shipped, mobilenet_bundle)]
    cat = _write_catalog(tmp_path, grocery_dir, 4)
    settings = Settings(milvus_uri=str(tmp_path / "two.db"), collection="two")
    store = CatalogStore(settings)  # both models served: the shipped one current, MobileNet beside it
    try:
        store.create_collection(ids[0], activate=True)
        store.serve(store.create_collection(ids[1]).collection, promote=False)
    finally:
        store.close()
    env = {**os.environ, "SHOPLENS_MILVUS_URI": settings.milvus_uri, "SHOPLENS_COLLECTION": "two"}
    cmd = [sys.executable, "-m", "shoplens", "index", "--catalog", str(cat), "--embedder", str(shipped), "--embedder", str(mobilenet_bundle),
           "--no-detector", "--state", str(tmp_path / "s.db"), "--no-progress"]

    def index() -> str:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    assert "4 imported" in index()
    assert "0 imported, 4 already indexed" in index()
    with sqlite3.connect(tmp_path / "s.db") as db:  # as if the run had died after writing the first model only
        db.execute("DELETE FROM done WHERE model_id = ?", (ids[1],))
    assert "4 imported" in index()
    store = CatalogStore(settings)
    try:
        for model_id, dim in zip(ids, (256, 1024)):
            binding = store.model_binding(model_id)
            assert binding.dim == dim and store.count(binding) == 4  # upserts by image id: the redo duplicated nothing
    finally:
        store.close()


@pytest.mark.slow
def test_two_workers_give_the_same_vectors(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    from shoplens.contract.manifest import load_manifest

    mid = load_manifest(mobilenet_bundle).embedder.model_id
    cat = _write_catalog(tmp_path, grocery_dir, 8)
    one, two = ListSink(mid), ListSink(mid)
    import_catalog(read_catalog(cat), embedder=mobilenet_bundle, detector=None, sink=one, state_path=tmp_path / "1.db", progress=False)
    s = import_catalog(read_catalog(cat), embedder=mobilenet_bundle, detector=None, sink=two, state_path=tmp_path / "2.db", workers=2, progress=False)
    assert s.imported == 8 and {k: v.vector for k, v in one.rows.items()} == {k: v.vector for k, v in two.rows.items()}


@pytest.mark.slow
def test_ray_engine_matches_local(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from shoplens.contract.manifest import load_manifest
    from shoplens.sdk.ray_import import import_catalog_ray

    mid = load_manifest(mobilenet_bundle).embedder.model_id
    cat = _write_catalog(tmp_path, grocery_dir, 10)
    local, distributed = ListSink(mid), ListSink(mid)
    import_catalog(read_catalog(cat), embedder=mobilenet_bundle, detector=None, sink=local, state_path=tmp_path / "l.db", progress=False)
    s = import_catalog_ray(read_catalog(cat), embedder=mobilenet_bundle, detector=None, sink=distributed, state_path=tmp_path / "r.db", workers=2, batch_size=4)
    assert (s.imported, s.duplicates, len(s.failed)) == (10, 1, 2)
    assert {k: v.vector for k, v in local.rows.items()} == {k: v.vector for k, v in distributed.rows.items()}
    again = import_catalog_ray(read_catalog(cat), embedder=mobilenet_bundle, detector=None, sink=distributed, state_path=tmp_path / "r.db", workers=2)
    assert (again.imported, again.already_done) == (0, 10)


class _FlakyRay:
    """Stands in for the ``ray`` module: the first ``init`` raises ``first_error``."""

    def __init__(self, first_error: Exception) -> None:
        self.first_error, self.inits, self.shutdowns = first_error, [], 0

    def init(self, address: str | None = None, **kwargs: object) -> None:
        self.inits.append(address)
        if len(self.inits) == 1:
            raise self.first_error

    def shutdown(self) -> None:
        self.shutdowns += 1


@pytest.mark.parametrize("error", [
    RuntimeError("Timed out waiting for file /tmp/ray/session_latest/logs/gcs_server.out"),
    Exception("The current node timed out during startup. This could happen because some of the raylet failed to startup"),
])
def test_a_slow_local_ray_start_is_retried_once(error: Exception) -> None:
    from shoplens.sdk.ray_import import _start_local

    ray = _FlakyRay(error)
    _start_local(ray, workers=2)
    assert (ray.inits, ray.shutdowns) == (["local", "local"], 1)  # "local": never a cluster found on this machine


def test_other_local_ray_start_failures_are_not_retried() -> None:
    """(Attaching to a cluster is never retried either: tests/sdk/test_ray_cluster.py.)"""
    from shoplens.sdk.ray_import import _start_local

    ray = _FlakyRay(RuntimeError("some other failure"))
    with pytest.raises(RuntimeError):
        _start_local(ray, workers=2)
    assert (len(ray.inits), ray.shutdowns) == (1, 0)


@pytest.mark.slow
def test_index_embeds_whole_images_unless_asked_to_detect(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    """`shoplens index` embeds each catalog image whole by default (it measured better: docs/sdk.md);
    `--detect` crops it to its main detection first, exactly as `import_options` says (the detector
    manifest's rule, top box)."""
    import subprocess
    import sys

    from lite_index import lite_rows
    from shoplens.sdk.images import load_rgb
    from shoplens.sdk.importer import import_options
    from shoplens.sdk.runtime import DeviceRuntime, Embedder

    detector = Path(__file__).resolve().parents[2] / "mobile_assets" / "yolov8n"
    photos = [grocery_dir / line.split(",")[0].strip() for line in (grocery_dir / "train.txt").read_text().splitlines()[:40:8]]
    cat = tmp_path / "catalog.jsonl"
    cat.write_text("\n".join(json.dumps({"product_id": f"p{i}", "image": str(p)}) for i, p in enumerate(photos)) + "\n")

    def index(name: str, *extra: str) -> dict[str, np.ndarray]:
        env = {**os.environ, "SHOPLENS_MILVUS_URI": str(tmp_path / f"{name}.db"), "SHOPLENS_COLLECTION": name}
        res = subprocess.run([sys.executable, "-m", "shoplens", "index", "--catalog", str(cat), "--embedder", str(mobilenet_bundle), *extra,
                              "--state", str(tmp_path / f"{name}.state.db"), "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        return dict(lite_rows(tmp_path / f"{name}.db", name).values())  # product id -> vector (one image per product)

    whole, detected = index("whole"), index("detected", "--detect", "--detector", str(detector))
    embedder = Embedder(mobilenet_bundle)
    flow = DeviceRuntime.from_bundle(embedder=mobilenet_bundle, detector=detector, options=import_options())
    cropped = 0
    for i, path in enumerate(photos):
        rgb = load_rgb(path)
        assert float(whole[f"p{i}"] @ embedder.embed(rgb)) >= 0.9999
        main = flow.process(rgb).objects[0]
        cropped += main.source == "detector"
        assert float(detected[f"p{i}"] @ main.vector) >= 0.9999
    assert cropped >= 2, "too few shelf photos had a detection: the test would not tell crops from whole images"
