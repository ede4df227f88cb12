"""The whole phone flow against the real service on 127.0.0.1: index real catalog images, search real shop photos."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from live_service import ADMIN_KEY, DEVICE_KEY, live_service
from scripted_http import Scripted, ScriptedServer
from shoplens.sdk.client import ShoplensClient
from shoplens.sdk.runtime import DeviceRuntime

N_PRODUCTS = 15


def _products(grocery_dir: Path) -> list[dict]:
    return list(csv.DictReader((grocery_dir / "classes.csv").open()))[:N_PRODUCTS]


def _catalog(tmp: Path, grocery_dir: Path) -> Path:
    """Iconic image + 3 train photos per product: the demo's catalog shape, smaller."""
    rows = []
    by_class: dict[int, list[str]] = {}
    for line in (grocery_dir / "train.txt").read_text().splitlines():
        path, fine, _ = (x.strip() for x in line.split(","))
        by_class.setdefault(int(fine), []).append(path)
    for p in _products(grocery_dir):
        cid = int(p["Class ID (int)"])
        rows.append({"product_id": p["Class Name (str)"], "image": str(grocery_dir / p["Iconic Image Path (str)"].lstrip("/")), "title": p["Class Name (str)"], "category": p["Coarse Class Name (str)"]})
        rows += [{"product_id": p["Class Name (str)"], "image": str(grocery_dir / t), "title": p["Class Name (str)"], "category": p["Coarse Class Name (str)"]} for t in by_class[cid][:3]]
    cat = tmp / "catalog.jsonl"
    cat.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return cat


def _queries(grocery_dir: Path) -> list[tuple[Path, str]]:
    names = {int(p["Class ID (int)"]): p["Class Name (str)"] for p in _products(grocery_dir)}
    out = []
    for line in (grocery_dir / "val.txt").read_text().splitlines():
        path, fine, _ = (x.strip() for x in line.split(","))
        if int(fine) in names:
            out.append((grocery_dir / path, names[int(fine)]))
    return out


@pytest.mark.slow
def test_index_then_search_real_photos(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    cat = _catalog(tmp_path, grocery_dir)
    with live_service(tmp_path / "catalog.db") as url:
        res = subprocess.run(
            [sys.executable, "-m", "shoplens", "index", "--catalog", str(cat), "--embedder", str(mobilenet_bundle), "--no-detector", "--server", url, "--api-key", ADMIN_KEY, "--state", str(tmp_path / "state.db"), "--no-progress"],
            capture_output=True, text=True, timeout=300,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"{N_PRODUCTS * 4}" in res.stdout and "imported" in res.stdout

        rt = DeviceRuntime.from_bundle(embedder=mobilenet_bundle)
        queries = _queries(grocery_dir)
        hits_at_1 = hits_at_5 = 0
        with ShoplensClient(url, DEVICE_KEY) as client:
            assert client.models() is not None
            for photo, expected in queries:
                result, response = rt.search(photo, client, top_k=5)
                ranked = [h.product_id for h in response.results[0].hits]
                assert len(ranked) == len(set(ranked)), "results must be distinct products"
                hits_at_1 += ranked[0] == expected
                hits_at_5 += expected in ranked
        r1, r5 = hits_at_1 / len(queries), hits_at_5 / len(queries)
        # 15 products: chance is 0.07 / 0.33; the ImageNet MobileNet reference is far above it
        assert r1 > 0.3 and r5 > 0.7, (r1, r5)

        html = tmp_path / "out.html"
        photo = queries[0][0]
        cli = subprocess.run(
            [sys.executable, "-m", "shoplens", "search", str(photo), "--embedder", str(mobilenet_bundle), "--box", "10,10,200,200", "--server", url, "--api-key", DEVICE_KEY, "--html", str(html), "--annotated", str(tmp_path / "a.jpg"), "--json"],
            capture_output=True, text=True, timeout=120,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        out = json.loads(cli.stdout)
        assert out["objects"][0]["source"] == "caller_box" and len(out["objects"][0]["hits"]) == 5
        assert "data:image/jpeg;base64" in html.read_text() and (tmp_path / "a.jpg").stat().st_size > 0

        # wrong key role and wrong model are clear errors, not crashes
        with ShoplensClient(url, DEVICE_KEY) as client:
            from shoplens.sdk.errors import AuthError, ModelMismatchError

            with pytest.raises(AuthError):
                client.delete_product(queries[0][1])
            with pytest.raises(ModelMismatchError, match="mobilenet-v1-imagenet-1024d"):
                client.search(np.ones(1024), model_id="other-model-1024d-0123456789ab")


def test_only_vectors_leave_the_sdk(grocery_dir: Path, mobilenet_bundle: Path) -> None:
    """Privacy: what the SDK sends for a photo is the encoded vector and options, never image bytes."""
    photo = _queries(grocery_dir)[0][0]
    jpeg = photo.read_bytes()
    reply = {"model_id": "x-1d-000000000000", "results": [{"index": 0, "hits": []}], "grouping": "native", "took_ms": 0}
    rt = DeviceRuntime.from_bundle(embedder=mobilenet_bundle)
    models = {"alias": "catalog", "models": [{"model_id": rt.embedder.model_id, "dim": 1024, "metric": "COSINE",
                                              "collection": "c", "active": True, "status": "current"}]}
    with ScriptedServer([Scripted(200, models), Scripted(200, reply)]) as srv, ShoplensClient(srv.url) as client:
        result, _ = rt.search(photo, client)
    status_read, req = srv.requests  # the first search reads the service's models (GET, no body)
    assert status_read["body"] in (None, {}, b"", "")
    body = req["body"]
    assert set(body) == {"model_id", "encoding", "vectors", "top_k"}
    raw = json.dumps(body)
    assert len(raw) < 2000 and len(raw) < len(jpeg) / 5
    assert body["vectors"] == [o.encoded for o in result.objects]
    import base64

    assert base64.b64encode(jpeg[:48]).decode()[:40] not in raw and "/9j/" not in raw  # no JPEG in any form
