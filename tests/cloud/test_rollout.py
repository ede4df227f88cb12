"""Issue 28: two real embedders served at once, routed by each vector's model id, through a whole rollout.

The shipped ResNet bundle and the ImageNet MobileNetV1 reference (wrapped with the
SDK's wrap-embedder) embed the Grocery Store iconic images (the catalog) and val
photos (the queries) for real; both backends.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from shoplens.contract.codecs import encode_vector

from cloudkit import ADMIN_H, DEVICE_H, wait_ready

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "mobile_assets" / "resnet50v2-s3-256"
MOBILENET = "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
QUERIES = 60

pytestmark = pytest.mark.slow


@dataclass
class Embedded:
    model_id: str
    catalog: np.ndarray  # one row per product (its iconic image)
    queries: np.ndarray


@dataclass
class Grocery:
    products: list[str]
    query_products: list[str]
    models: list[Embedded]


@pytest.fixture(scope="module")
def grocery(shared_dir: Path, grocery_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Grocery:
    from shoplens.demo.grocery import load_grocery
    from shoplens.sdk.images import load_rgb
    from shoplens.sdk.runtime import Embedder
    from shoplens.sdk.wrap import wrap_tflite_embedder

    data = load_grocery(grocery_dir)
    rng = np.random.default_rng(0)
    val = [data.val[i] for i in sorted(rng.choice(len(data.val), QUERIES, replace=False))]
    mobilenet = tmp_path_factory.mktemp("mobilenet")
    wrap_tflite_embedder(shared_dir / "weights" / MOBILENET, mobilenet, name="mobilenet-v1-imagenet", link=True)
    catalog_rgb = [load_rgb(p.iconic) for p in data.products]
    query_rgb = [load_rgb(path) for path, _ in val]
    models = []
    for bundle in (SHIPPED, mobilenet):
        emb = Embedder(bundle)
        models.append(Embedded(emb.model_id, np.stack([emb.embed(x) for x in catalog_rgb]),
                               np.stack([emb.embed(x) for x in query_rgb])))
    return Grocery([p.product_id for p in data.products], [pid for _, pid in val], models)


def _images(g: Grocery, m: Embedded) -> list[dict]:
    return [{"image_id": f"iconic-{pid}", "product_id": pid, "vector": encode_vector(v, "f32"), "encoding": "f32"}
            for pid, v in zip(g.products, m.catalog)]


def _top1(c, m: Embedded, v: np.ndarray):
    r = c.post("/v1/search", json={"model_id": m.model_id, "vector": encode_vector(v, "i8"), "encoding": "i8", "top_k": 5},
               headers=DEVICE_H)
    return r


def _recall_and_agreement(c, g: Grocery, m: Embedded) -> tuple[float, float]:
    """R@1 of the service's answers, and how often its top-1 is brute force's top-1 (same vectors)."""
    exact = [g.products[int(i)] for i in np.argmax(m.queries @ m.catalog.T, axis=1)]
    got = []
    for v in m.queries:
        r = _top1(c, m, v)
        assert r.status_code == 200, r.text
        got.append(r.json()["hits"][0]["product_id"])
    recall = float(np.mean([a == b for a, b in zip(got, g.query_products)]))
    agree = float(np.mean([a == b for a, b in zip(got, exact)]))
    return recall, agree


def test_two_real_embedders_through_a_rollout(backend, client_for, grocery: Grocery) -> None:
    _, make = backend
    settings = make(rate_limit_per_s=10_000, rate_limit_burst=10_000)
    c = client_for(settings)
    old, new = grocery.models
    assert c.put("/v1/catalog/images", json={"model_id": old.model_id, "images": _images(grocery, old)}, headers=ADMIN_H).status_code == 200
    before = [_top1(c, old, v).json()["hits"] for v in old.queries[:10]]

    # the new model is indexed beside the current one while its apps search: their answers never change
    from shoplens.cloud.reindex import StoreAdmin, reindex

    rows = Path(settings.cache_dir) / "rows.jsonl"
    rows.parent.mkdir(parents=True, exist_ok=True)
    import json

    rows.write_text("".join(json.dumps(img) + "\n" for img in _images(grocery, new)))
    done = threading.Event()
    result = {}

    def run_reindex() -> None:
        result["r"] = reindex(StoreAdmin(c.app.state.shoplens.store), new.model_id, rows)
        done.set()

    threading.Thread(target=run_reindex, daemon=True).start()
    during, deadline = 0, time.monotonic() + 120
    while (not done.is_set() or during == 0) and during < 500 and time.monotonic() < deadline:  # bounded
        for v, hits in zip(old.queries[:10], before):
            r = _top1(c, old, v)
            assert r.status_code == 200 and r.json()["hits"] == hits
        during += 1
    assert done.wait(timeout=60) and result["r"].promoted is False  # served beside, not swapped

    # both models answer, each with its own vectors, as well as brute force over the same vectors
    models = {m["model_id"]: m for m in c.get("/v1/models", headers=DEVICE_H).json()["models"]}
    assert (models[old.model_id]["status"], models[new.model_id]["status"]) == ("current", "supported")
    for m, floor in ((old, 0.6), (new, 0.15)):
        recall, agree = _recall_and_agreement(c, grocery, m)
        assert agree >= 0.95 and recall >= floor, (m.model_id, recall, agree)
    wrong = c.post("/v1/search", json={"model_id": old.model_id, "vector": encode_vector(new.queries[0], "i8"), "encoding": "i8"}, headers=DEVICE_H)
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "wrong_dimension"

    # writes reach every model (the admin sends each model's vectors), one delete reaches all
    probe = {m.model_id: m.queries[0] for m in grocery.models}
    for m in grocery.models:
        body = {"model_id": m.model_id, "images": [{"image_id": "new-1", "product_id": "brand-new", "encoding": "f32",
                                                      "vector": encode_vector(probe[m.model_id], "f32")}]}
        assert c.put("/v1/catalog/images", json=body, headers=ADMIN_H).status_code == 200
        assert _top1(c, m, probe[m.model_id]).json()["hits"][0]["product_id"] == "brand-new"
    assert c.delete("/v1/catalog/products/brand-new", headers=ADMIN_H).json() == {"deleted": 1}
    for m in grocery.models:
        assert _top1(c, m, probe[m.model_id]).json()["hits"][0]["product_id"] != "brand-new"

    # promote the new model, deprecate the old one: its answers carry Deprecation and Sunset
    bundle = "https://apps.example/bundles/mobilenet.zip"
    r = c.post(f"/v1/models/{new.model_id}/promote", json={"bundle_url": bundle}, headers=ADMIN_H)
    assert r.status_code == 200 and r.json()["status"] == "current" and r.json()["bundle_url"] == bundle
    r = c.post(f"/v1/models/{old.model_id}/deprecate", json={"sunset": "2027-03-31"}, headers=ADMIN_H)
    assert r.status_code == 200 and r.json()["sunset"] == "2027-03-31"
    r = _top1(c, old, old.queries[0])
    assert r.status_code == 200 and r.headers["sunset"] == "Wed, 31 Mar 2027 23:59:59 GMT"
    assert r.headers["deprecation"].startswith("@") and int(r.headers["deprecation"][1:]) <= time.time()
    assert "deprecation" not in _top1(c, new, new.queries[0]).headers
    assert c.post(f"/v1/models/{old.model_id}/deprecate", headers=ADMIN_H).status_code == 422  # needs a sunset
    assert c.post(f"/v1/models/{new.model_id}/retire", headers=ADMIN_H).status_code == 422  # the current one

    # retire: 410 with the current model and its bundle
    assert c.post(f"/v1/models/{old.model_id}/retire", headers=ADMIN_H).json()["status"] == "retired"
    r = _top1(c, old, old.queries[0])
    assert r.status_code == 410 and r.json()["error"]["code"] == "model_retired"
    assert r.json()["error"]["details"] == {"request_model_id": old.model_id, "current_model_id": new.model_id,
                                            "current_bundle_url": bundle}
    assert c.post("/v1/search", json={"model_id": "nobody-256d-000000000000", "vector": encode_vector(old.queries[0], "i8")},
                  headers=DEVICE_H).status_code == 409  # unknown stays 409
    metrics = c.get("/metrics").text
    assert f'shoplens_model_requests_total{{model_id="{old.model_id}",outcome="deprecated"}}' in metrics
    assert f'shoplens_model_requests_total{{model_id="{old.model_id}",outcome="model_retired"}}' in metrics
    assert 'shoplens_model_requests_total{model_id="unregistered",outcome="model_mismatch"}' in metrics

    # a restart keeps the registry; a retired model can be served again while its collection exists
    c.__exit__(None, None, None)
    c = client_for(settings)
    wait_ready(c)
    models = {m["model_id"]: m["status"] for m in c.get("/v1/models", headers=DEVICE_H).json()["models"]}
    assert models == {new.model_id: "current", old.model_id: "retired"}
    assert _top1(c, old, old.queries[0]).status_code == 410
    assert c.post(f"/v1/models/{old.model_id}/support", headers=ADMIN_H).json()["status"] == "supported"
    assert _top1(c, old, old.queries[0]).status_code == 200
