"""`shoplens index --engine ray` straight into a real Milvus server: each embedding actor opens its own
sink (the importing process's settings, handed over in a partial) and writes its batches in parallel.

Carries the ``ray_cluster`` mark with the cluster tests (``.ci/run``: ``-m ray_cluster``): it starts
Ray and embeds real images, which is too long for the default run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoplens.settings import Settings

pytestmark = [pytest.mark.ray_cluster, pytest.mark.milvus_server, pytest.mark.slow]

SHIPPED = Path(__file__).resolve().parents[2] / "mobile_assets" / "resnet50v2-s3-256"
N_IMAGES = 40


def test_ray_workers_write_straight_into_a_milvus_server(milvus_server, grocery_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from shoplens.cloud.store import CatalogStore
    from shoplens.contract.manifest import load_manifest
    from shoplens.sdk.importer import image_id_for

    lines = (grocery_dir / "val.txt").read_text().splitlines()[:N_IMAGES]
    rows = [{"product_id": f"p{line.split(',')[1].strip()}", "image": str(grocery_dir / line.split(",")[0].strip())} for line in lines]
    rows.append({**rows[3], "title": "the same bytes again"})
    cat = tmp_path / "catalog.jsonl"
    cat.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    settings = Settings(milvus_uri=milvus_server.uri, collection="t_ray_import")
    env = {**os.environ, "SHOPLENS_MILVUS_URI": settings.milvus_uri, "SHOPLENS_COLLECTION": settings.collection, "COLUMNS": "250"}
    cmd = [sys.executable, "-m", "shoplens", "index", "--catalog", str(cat), "--embedder", str(SHIPPED), "--no-detector", "--engine", "ray",
           "--workers", "2", "--batch-size", "8", "--state", str(tmp_path / "state.db"), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert f"{N_IMAGES} imported, 0 already indexed (resumed), 1 exact duplicates, 0 failed, of {N_IMAGES + 1}" in " ".join(res.stdout.split())

    store = CatalogStore(settings)
    try:
        binding = store.model_binding(load_manifest(SHIPPED).embedder.model_id)  # type: ignore[union-attr]
        assert store.count(binding) == N_IMAGES
        for row in rows[:N_IMAGES]:
            image_id = image_id_for(hashlib.sha256(Path(row["image"]).read_bytes()).hexdigest())
            assert image_id in {img["image_id"] for img in store.product_images(binding, row["product_id"])}
    finally:
        store.close()
