"""Model change end to end: catalog indexed with one embedder, `shoplens reindex --catalog` with another."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from live_service import ADMIN_KEY, DEVICE_KEY, live_service
from shoplens.contract.manifest import load_manifest
from shoplens.sdk.client import ShoplensClient
from shoplens.sdk.errors import ModelMismatchError
from shoplens.sdk.runtime import Embedder
from shoplens.sdk.images import load_rgb

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_reindex_from_catalog_swaps_models(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    old_bundle = mobilenet_bundle
    new_bundle = ROOT / "mobile_assets" / "resnet50v2-s3-256"
    old_id, new_id = load_manifest(old_bundle).embedder.model_id, load_manifest(new_bundle).embedder.model_id
    lines = (grocery_dir / "train.txt").read_text().splitlines()[::90][:30]
    cat = tmp_path / "catalog.jsonl"
    cat.write_text("\n".join(json.dumps({"product_id": f"p{l.split(',')[1].strip()}", "image": str(grocery_dir / l.split(",")[0].strip())}) for l in lines) + "\n")
    env_cache = {"SHOPLENS_CACHE_DIR": str(tmp_path / "cache")}
    import os

    with live_service(tmp_path / "catalog.db") as url:
        first = subprocess.run([sys.executable, "-m", "shoplens", "index", "--catalog", str(cat), "--embedder", str(old_bundle), "--no-detector", "--server", url, "--api-key", ADMIN_KEY, "--state", str(tmp_path / "s.db"), "--no-progress"], capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stdout + first.stderr
        swap = subprocess.run([sys.executable, "-m", "shoplens", "reindex", "--bundle", str(new_bundle), "--catalog", str(cat), "--url", url, "--admin-key", ADMIN_KEY], capture_output=True, text=True, timeout=600, env={**os.environ, **env_cache})
        assert swap.returncode == 0, swap.stdout + swap.stderr
        result = json.loads(swap.stdout)
        assert result["model_id"] == new_id and result["previous_model_id"] == old_id and result["rows"] == len(lines)

        emb = Embedder(new_bundle)
        photo = grocery_dir / lines[0].split(",")[0].strip()
        with ShoplensClient(url, DEVICE_KEY) as c:
            hits = c.search(emb.embed(load_rgb(photo)), model_id=new_id, top_k=3).hits
            assert hits[0].product_id == f"p{lines[0].split(',')[1].strip()}" and hits[0].score > 0.99  # the same image is in the catalog
            # served beside the old model: apps still on it keep working until it is retired
            assert result["promoted"] is False and c.search(np.ones(1024), model_id=old_id).hits
            assert {m.model_id: m.status for m in c.models().models} == {old_id: "current", new_id: "supported"}
            with pytest.raises(ModelMismatchError, match=new_id):
                c.search(np.ones(1024), model_id="other-model-1024d-0123456789ab")
