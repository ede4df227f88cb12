"""Search and catalog endpoints, the same tests on Milvus Lite and on a Milvus server."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shoplens.contract.codecs import encode_vector

from cloudkit import ADMIN_H, DEVICE_H, DIM, MODEL, MODEL_NEXT, Catalog, query


@pytest.fixture
def seeded(backend, client_for, catalog):
    kind, make = backend
    c = client_for(make())
    r = c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H)
    assert r.status_code == 200, r.text
    assert r.json() == {"upserted": len(catalog.images), "model_id": MODEL}
    return kind, c, catalog


def exact_products(catalog: Catalog, v: np.ndarray, k: int, keep=lambda img: True) -> list[str]:
    """Reference: best cosine per product by brute force, top k products."""
    best: dict[str, float] = {}
    for img in catalog.images:
        if not keep(img):
            continue
        s = float(catalog.vectors[img["image_id"]] @ v)
        best[img["product_id"]] = max(best.get(img["product_id"], -2.0), s)
    return [p for p, _ in sorted(best.items(), key=lambda kv: -kv[1])[:k]]


@pytest.mark.parametrize("encoding", ["f32", "f16", "i8"])
def test_search_returns_distinct_products_in_exact_order(seeded, encoding):
    kind, c, catalog = seeded
    v = catalog.vectors["img-4-1"]
    r = c.post("/v1/search", json=query(v, encoding, top_k=5), headers=DEVICE_H)
    assert r.status_code == 200, r.text
    body = r.json()
    products = [h["product_id"] for h in body["hits"]]
    assert len(products) == len(set(products)) == 5
    assert products == exact_products(catalog, v, 5)
    assert body["hits"][0]["image_id"] == "img-4-1" and body["hits"][0]["score"] > 0.99
    assert body["grouping"] == ("native" if kind == "lite" else "overfetch")  # 2.3.5 ignores group_by_field
    assert body["model_id"] == MODEL
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    hit = body["hits"][0]
    assert hit["title"] == "Product 4" and hit["price"] == 40.0 and hit["currency"] == "EUR"
    assert hit["attributes"] == {"colour": "blue", "size": 0} and hit["category"] == "shoes"


def test_top_k_larger_than_catalog_returns_every_product_once(seeded):
    _, c, catalog = seeded
    r = c.post("/v1/search", json=query(catalog.centres[0], top_k=100), headers=DEVICE_H)
    assert r.status_code == 200
    products = [h["product_id"] for h in r.json()["hits"]]
    assert sorted(products) == sorted({img["product_id"] for img in catalog.images})


def test_filters_category_price_attribute_and_min_score(seeded):
    _, c, catalog = seeded
    v = catalog.centres[3]
    r = c.post("/v1/search", json=query(v, top_k=20, filters={"category_in": ["shoes"]}), headers=DEVICE_H)
    assert {h["category"] for h in r.json()["hits"]} == {"shoes"}
    assert len(r.json()["hits"]) == 6

    r = c.post("/v1/search", json=query(v, top_k=20, filters={"price_min": 20, "price_max": 50}), headers=DEVICE_H)
    assert sorted(h["price"] for h in r.json()["hits"]) == [20.0, 30.0, 40.0, 50.0]

    r = c.post("/v1/search", json=query(v, top_k=20, filters={"price_max": 15}), headers=DEVICE_H)
    assert sorted(h["price"] for h in r.json()["hits"]) == [0.0, 10.0]

    r = c.post("/v1/search", json=query(v, top_k=20, filters={"attributes": {"colour": "red", "size": 3}}),
               headers=DEVICE_H)
    assert [h["product_id"] for h in r.json()["hits"]] == ["prod-3"]

    r = c.post("/v1/search", json=query(v, top_k=20, min_score=0.9), headers=DEVICE_H)
    hits = r.json()["hits"]
    assert hits and all(h["score"] >= 0.9 for h in hits)
    assert hits[0]["product_id"] == "prod-3"
    assert exact_products(catalog, v / np.linalg.norm(v), len(hits)) == [h["product_id"] for h in hits]


def test_filter_values_cannot_inject_into_the_expression(seeded):
    _, c, catalog = seeded
    evil = ['shoes"] or category in ["bags', 'x" or 1 == 1 or "', "a\\", "ünïcode \n\t"]
    r = c.post("/v1/search", json=query(catalog.centres[0], filters={"category_in": evil}), headers=DEVICE_H)
    assert r.status_code == 200, r.text
    assert r.json()["hits"] == []
    r = c.post("/v1/search", json=query(catalog.centres[0], filters={"attributes": {"colour": 'red" or 1==1 or "'}}),
               headers=DEVICE_H)
    assert r.status_code == 200 and r.json()["hits"] == []
    r = c.post("/v1/search", json=query(catalog.centres[0], filters={"attributes": {'colour"] or true or x["': "red"}}),
               headers=DEVICE_H)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    # values with quotes, backslashes, newlines and non-ASCII still match exactly
    odd = 'say "hi" \\ ünï\n'
    img = dict(catalog.images[0], image_id="odd", product_id="odd", category=odd, attributes={"note": odd})
    assert c.put("/v1/catalog/images", json={"model_id": MODEL, "images": [img]}, headers=ADMIN_H).status_code == 200
    for filters in ({"category_in": [odd]}, {"attributes": {"note": odd}}):
        r = c.post("/v1/search", json=query(catalog.centres[5], filters=filters), headers=DEVICE_H)
        assert [h["image_id"] for h in r.json()["hits"]] == ["odd"], filters
    r = c.post("/v1/search", json=query(catalog.centres[0], filters={"category_in": ["a\x01"]}), headers=DEVICE_H)
    assert r.status_code == 422


def test_batch_search_one_result_list_per_vector(seeded):
    kind, c, catalog = seeded
    ids = ["img-0-0", "img-5-2", "img-9-1"]
    body = {"model_id": MODEL, "encoding": "f16", "top_k": 3,
            "vectors": [encode_vector(catalog.vectors[i], "f16") for i in ids]}
    r = c.post("/v1/search/batch", json=body, headers=DEVICE_H)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["index"] for res in results] == [0, 1, 2]
    for image_id, res in zip(ids, results):
        assert res["hits"][0]["image_id"] == image_id
        assert len({h["product_id"] for h in res["hits"]}) == 3
        assert [h["product_id"] for h in res["hits"]] == exact_products(catalog, catalog.vectors[image_id], 3)


def test_upsert_is_idempotent_and_replaces_by_image_id(seeded):
    _, c, catalog = seeded
    before = c.get("/v1/stats", headers=ADMIN_H).json()["rows"]
    assert before == len(catalog.images)
    again = c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H)
    assert again.status_code == 200
    changed = dict(catalog.images[0], title="Renamed", product_id="prod-new")
    assert c.put("/v1/catalog/images", json={"model_id": MODEL, "images": [changed]}, headers=ADMIN_H).status_code == 200
    assert c.get("/v1/stats", headers=ADMIN_H).json()["rows"] == before
    got = c.get("/v1/catalog/products/prod-new", headers=DEVICE_H).json()
    assert [img["image_id"] for img in got["images"]] == [changed["image_id"]]
    assert got["images"][0]["title"] == "Renamed"
    old = c.get("/v1/catalog/products/prod-0", headers=DEVICE_H).json()
    assert changed["image_id"] not in [img["image_id"] for img in old["images"]]


def test_get_and_delete_image_and_product(seeded):
    _, c, catalog = seeded
    got = c.get("/v1/catalog/products/prod-2", headers=DEVICE_H)
    assert got.status_code == 200
    assert [i["image_id"] for i in got.json()["images"]] == ["img-2-0", "img-2-1", "img-2-2"]
    assert "vector" not in got.json()["images"][0]

    assert c.delete("/v1/catalog/images/img-2-0", headers=ADMIN_H).json() == {"deleted": 1}
    r = c.delete("/v1/catalog/images/img-2-0", headers=ADMIN_H)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = c.post("/v1/search", json=query(catalog.vectors["img-2-0"], top_k=100), headers=DEVICE_H)
    assert "img-2-0" not in [h["image_id"] for h in r.json()["hits"]]

    assert c.delete("/v1/catalog/products/prod-2", headers=ADMIN_H).json() == {"deleted": 2}
    assert c.get("/v1/catalog/products/prod-2", headers=DEVICE_H).status_code == 404
    assert c.delete("/v1/catalog/products/prod-2", headers=ADMIN_H).status_code == 404
    r = c.post("/v1/search", json=query(catalog.centres[2], top_k=100), headers=DEVICE_H)
    assert "prod-2" not in [h["product_id"] for h in r.json()["hits"]]
    assert c.get("/v1/stats", headers=ADMIN_H).json()["rows"] == len(catalog.images) - 3


def test_models_stats_ready(seeded):
    kind, c, _ = seeded
    models = c.get("/v1/models", headers=DEVICE_H).json()
    assert [(m["model_id"], m["dim"], m["active"]) for m in models["models"]] == [(MODEL, DIM, True)]
    stats = c.get("/v1/stats", headers=ADMIN_H).json()
    assert stats["backend"] == kind and stats["model_id"] == MODEL and stats["warnings"] == []
    ready = c.get("/v1/ready").json()
    assert ready["status"] == "ready" and ready["backend"] == kind


def test_vector_errors(seeded):
    _, c, catalog = seeded
    v = catalog.centres[0]

    def err(body):
        r = c.post("/v1/search", json=body, headers=DEVICE_H)
        return r.status_code, r.json()["error"]["code"], r.json()["error"]["message"]

    status, code, msg = err({**query(v), "model_id": MODEL_NEXT})
    assert (status, code) == (409, "model_mismatch") and MODEL in msg and MODEL_NEXT in msg
    assert err({**query(v), "vector": encode_vector(np.ones(DIM + 1), "i8")})[:2] == (422, "wrong_dimension")
    assert err({**query(v), "vector": "not base64!!"})[:2] == (422, "invalid_vector")
    nan = np.full(DIM, np.nan, dtype="<f4").tobytes()
    import base64

    status, code, msg = err({**query(v, "f32"), "vector": base64.b64encode(nan).decode()})
    assert (status, code) == (422, "invalid_vector") and "NaN" in msg
    inf = np.ones(DIM, dtype="<f4")
    inf[3] = math.inf
    assert err({**query(v, "f32"), "vector": base64.b64encode(inf.tobytes()).decode()})[:2] == (422, "invalid_vector")
    assert err({**query(v), "encoding": "f64"})[:2] == (422, "validation_error")
    assert err(query(v, top_k=101))[:2] == (422, "validation_error")
    status, code, msg = err(query(v, filters={"color": "red"}))
    assert (status, code) == (422, "unknown_filter_field") and "color" in msg
    r = c.post("/v1/search/batch", json={"model_id": MODEL, "vectors": [encode_vector(v, "i8")] * 17},
               headers=DEVICE_H)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = c.post("/v1/search/batch", json={"model_id": MODEL, "vectors": [encode_vector(v, "i8"), "@@"]},
               headers=DEVICE_H)
    assert r.status_code == 422 and "vectors[1]" in r.json()["error"]["message"]


def test_upsert_errors(seeded):
    _, c, catalog = seeded
    r = c.put("/v1/catalog/images", json=catalog.upsert_body(MODEL_NEXT), headers=ADMIN_H)
    assert r.status_code == 409 and MODEL_NEXT in r.json()["error"]["message"]
    bad = dict(catalog.images[1], vector=encode_vector(np.ones(DIM * 2), "f32"))
    r = c.put("/v1/catalog/images", json={"model_id": MODEL, "images": [catalog.images[0], bad]}, headers=ADMIN_H)
    assert r.status_code == 422 and r.json()["error"]["code"] == "wrong_dimension"
    assert "images[1]" in r.json()["error"]["message"]
    r = c.put("/v1/catalog/images", json={"model_id": MODEL, "images": [catalog.images[0]] * 1001}, headers=ADMIN_H)
    assert r.status_code == 422


def test_search_before_any_catalog_is_404(backend, client_for):
    _, make = backend
    c = client_for(make())
    r = c.post("/v1/search", json=query(np.ones(DIM)), headers=DEVICE_H)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert c.get("/v1/models", headers=DEVICE_H).json()["models"] == []
    assert c.get("/v1/stats", headers=ADMIN_H).json()["rows"] == 0


def test_the_stores_sync_search_answers_like_the_service(backend, client_for, catalog):
    """``CatalogStore.search`` (the sync client: benchmarks, tools) and the service's asyncio path
    run the same rounds: same request, same grouping, same hits."""
    import numpy as np

    _, make = backend
    c = client_for(make())
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    single = c.post("/v1/search", json=query(catalog.vectors["img-7-2"], "f32", top_k=6), headers=DEVICE_H)
    batch = c.post("/v1/search/batch", headers=DEVICE_H, json={
        "model_id": MODEL, "encoding": "f32", "top_k": 4,
        "vectors": [encode_vector(catalog.vectors[i], "f32") for i in ("img-1-0", "img-8-1")]})
    assert single.status_code == batch.status_code == 200, (single.text, batch.text)
    store = c.app.state.shoplens.store
    binding = store.binding(refresh=True)
    hits, grouping = store.search(binding, catalog.vectors["img-7-2"][None, :].astype(np.float32), top_k=6)
    assert [(h.image_id, round(h.score, 5)) for h in hits[0]] == [(h["image_id"], round(h["score"], 5)) for h in single.json()["hits"]]
    assert grouping == single.json()["grouping"]
    pair = np.stack([catalog.vectors[i] for i in ("img-1-0", "img-8-1")]).astype(np.float32)
    results, _ = store.search(binding, pair, top_k=4)
    assert [[h.image_id for h in r] for r in results] == [[h["image_id"] for h in res["hits"]] for res in batch.json()["results"]]
    assert hits[0][0].image_id == "img-7-2"
