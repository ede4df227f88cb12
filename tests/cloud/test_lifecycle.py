"""Persistence across restarts, re-index with an alias swap, concurrency: on both backends."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shoplens.contract.codecs import encode_vector

from cloudkit import ADMIN, ADMIN_H, DEVICE, DEVICE_H, MODEL, MODEL_NEXT, Catalog, query, wait_ready


def _search_ids(c, v, top_k=5, model_id=MODEL):
    r = c.post("/v1/search", json={**query(v, top_k=top_k), "model_id": model_id}, headers=DEVICE_H)
    assert r.status_code == 200, r.text
    return [(h["product_id"], h["image_id"], round(h["score"], 5)) for h in r.json()["hits"]]


def test_restart_on_the_same_storage_returns_the_same_results(backend, client_for, catalog):
    _, make = backend
    settings = make()
    c = client_for(settings)
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    assert c.delete("/v1/catalog/images/img-1-1", headers=ADMIN_H).status_code == 200
    before = [_search_ids(c, catalog.centres[p]) for p in range(4)]
    c.__exit__(None, None, None)  # lifespan shutdown closes the store (and releases the Lite file)

    again = client_for(settings)
    wait_ready(again)
    after = [_search_ids(again, catalog.centres[p]) for p in range(4)]
    assert after == before
    assert again.get("/v1/stats", headers=ADMIN_H).json()["rows"] == len(catalog.images) - 1
    assert "img-1-1" not in [i["image_id"] for i in again.get("/v1/catalog/products/prod-1", headers=DEVICE_H).json()["images"]]


def test_a_rollout_serves_both_models_until_the_old_one_is_retired(backend, client_for, catalog):
    _, make = backend
    c = client_for(make())
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    old_active = [m for m in c.get("/v1/models", headers=DEVICE_H).json()["models"] if m["active"]][0]
    assert old_active["status"] == "current"

    # the "new model": another vector space (a fixed rotation of the old one)
    rot = np.linalg.qr(np.random.default_rng(7).normal(size=(16, 16)))[0]
    created = c.post("/v1/catalog/collections", json={"model_id": MODEL_NEXT}, headers=ADMIN_H)
    assert created.status_code == 201 and created.json()["active"] is False
    staging = created.json()["collection"]
    new_images = [dict(img, vector=encode_vector(catalog.vectors[img["image_id"]] @ rot, "f32"))
                  for img in catalog.images]

    # while the new collection fills, old-model searches keep working; new-model vectors are not served yet
    before = _search_ids(c, catalog.centres[2])
    r = c.put("/v1/catalog/images", params={"collection": staging},
              json={"model_id": MODEL_NEXT, "images": new_images}, headers=ADMIN_H)
    assert r.status_code == 200, r.text
    assert _search_ids(c, catalog.centres[2]) == before
    err = c.post("/v1/search", json={**query(catalog.centres[2] @ rot), "model_id": MODEL_NEXT}, headers=DEVICE_H)
    assert err.status_code == 409 and err.json()["error"]["details"]["served_model_ids"] == [MODEL]
    # writing the wrong model into the staging collection is refused
    r = c.put("/v1/catalog/images", params={"collection": staging}, json=catalog.upsert_body(MODEL), headers=ADMIN_H)
    assert r.status_code == 409

    r = c.post(f"/v1/catalog/collections/{staging}/activate", headers=ADMIN_H)
    assert r.status_code == 200 and r.json()["model_id"] == MODEL_NEXT and r.json()["active"] is True

    # both models are served: apps on the old bundle keep working while they update
    assert _search_ids(c, catalog.centres[2]) == before
    new_hits = _search_ids(c, catalog.centres[2] @ rot, model_id=MODEL_NEXT)
    assert [p for p, _, _ in new_hits] == [p for p, _, _ in before]
    models = c.get("/v1/models", headers=DEVICE_H).json()["models"]
    assert [(m["model_id"], m["status"], m["active"]) for m in models] == [(MODEL_NEXT, "current", True), (MODEL, "supported", False)]

    # the old model is retired: its apps get 410 naming the current model; then its collection can go
    assert c.delete(f"/v1/catalog/collections/{old_active['collection']}", headers=ADMIN_H).status_code == 422  # still served
    assert c.post(f"/v1/models/{MODEL}/retire", headers=ADMIN_H).json()["status"] == "retired"
    gone = c.post("/v1/search", json=query(catalog.centres[2]), headers=DEVICE_H)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "model_retired"
    assert gone.json()["error"]["details"]["current_model_id"] == MODEL_NEXT
    assert c.delete(f"/v1/catalog/collections/{staging}", headers=ADMIN_H).status_code == 422  # the current one
    assert c.delete(f"/v1/catalog/collections/{old_active['collection']}", headers=ADMIN_H).status_code == 200
    models = c.get("/v1/models", headers=DEVICE_H).json()["models"]
    assert [(m["model_id"], m["status"], m["collection"]) for m in models] == [(MODEL_NEXT, "current", staging), (MODEL, "retired", "")]
    # a retired model whose collection is gone cannot be re-activated
    assert c.post(f"/v1/models/{MODEL}/support", headers=ADMIN_H).status_code == 404


def test_reindex_cli_direct_with_rows_jsonl(lite_settings, client_for, catalog, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from shoplens.cli import app

    settings = lite_settings()
    c = client_for(settings)
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    c.__exit__(None, None, None)  # a Lite file is locked to one process/user: release it for the CLI

    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(img) for img in catalog.images[:10]) + "\n")
    monkeypatch.setenv("SHOPLENS_MILVUS_URI", settings.milvus_uri)
    monkeypatch.setenv("SHOPLENS_COLLECTION", settings.collection)
    from shoplens.settings import get_settings

    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["reindex", "--model-id", MODEL_NEXT, "--rows", str(rows), "--drop-old"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["rows"] == 10 and out["previous_model_id"] == MODEL and out["dropped_previous"] is True
    assert out["promoted"] is True and out["retired_previous"] is True

    c2 = client_for(settings)
    wait_ready(c2)  # the reopened file loads its collection first
    stats = c2.get("/v1/stats", headers=ADMIN_H).json()
    assert stats["model_id"] == MODEL_NEXT and stats["rows"] == 10
    models = c2.get("/v1/models", headers=DEVICE_H).json()["models"]
    assert [(m["model_id"], m["status"]) for m in models] == [(MODEL_NEXT, "current"), (MODEL, "retired")]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(catalog.images[0]) + "\n{\"image_id\": 1}\n")
    c2.__exit__(None, None, None)
    result = CliRunner().invoke(app, ["reindex", "--model-id", MODEL, "--rows", str(bad)])
    assert result.exit_code != 0 and "bad.jsonl:2" in str(result.exception)


def test_searches_while_writing_from_threads(backend, client_for):
    _, make = backend
    c = client_for(make(rate_limit_burst=10_000))
    base = Catalog(n_products=20, per_product=2, seed=1)
    assert c.put("/v1/catalog/images", json=base.upsert_body(), headers=ADMIN_H).status_code == 200
    extra = Catalog(n_products=20, per_product=2, seed=2)
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> int:
        n = 0
        for i in range(0, len(extra.images), 5):
            chunk = [dict(img, image_id="w-" + img["image_id"], product_id="w-" + img["product_id"])
                     for img in extra.images[i:i + 5]]
            r = c.put("/v1/catalog/images", json={"model_id": MODEL, "images": chunk}, headers=ADMIN_H)
            if r.status_code != 200:
                errors.append(f"write {r.status_code} {r.text}")
            n += len(chunk)
        stop.set()
        return n

    def searcher(seed: int) -> int:
        rng = np.random.default_rng(seed)
        done = 0
        while not stop.is_set() or done < 5:
            p = int(rng.integers(0, 20))
            r = c.post("/v1/search", json=query(base.centres[p], top_k=5), headers=DEVICE_H)
            if r.status_code != 200:
                errors.append(f"search {r.status_code} {r.text}")
            else:
                products = [h["product_id"] for h in r.json()["hits"]]
                if products[0] != f"prod-{p}" or len(set(products)) != len(products):
                    errors.append(f"search for prod-{p} got {products}")
            done += 1
            if done > 200:
                break
        return done

    with ThreadPoolExecutor(max_workers=4) as pool:
        searches = [pool.submit(searcher, s) for s in range(3)]
        written = pool.submit(writer)
        assert written.result(timeout=120) == len(extra.images)
        counts = [f.result(timeout=120) for f in searches]
    assert not errors, errors[:5]
    assert all(n >= 5 for n in counts)
    assert c.get("/v1/stats", headers=ADMIN_H).json()["rows"] == len(base.images) + len(extra.images)


@pytest.mark.milvus_server
def test_milvus_server_restart_keeps_acknowledged_writes(milvus_server, client_for, catalog):
    """A 2xx write survives the session's Milvus server being stopped (terminate, SIGKILL after 1 s) and restarted."""
    from shoplens.settings import Settings

    def settings() -> Settings:
        return Settings(milvus_uri=milvus_server.uri, collection="t_server_restart", admin_keys=[ADMIN],
                        device_keys=[DEVICE], index_params={"M": 8, "efConstruction": 32}, milvus_timeout_s=5.0)

    c = client_for(settings())
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    assert c.delete("/v1/catalog/products/prod-3", headers=ADMIN_H).status_code == 200
    before = [_search_ids(c, catalog.centres[p]) for p in range(3)]
    milvus_server.stop()
    try:
        t0 = time.monotonic()
        down = c.post("/v1/search", json=query(catalog.centres[0]), headers=DEVICE_H)
        assert down.status_code == 503 and down.json()["error"]["code"] == "backend_unavailable", down.text
        assert down.headers["retry-after"] == "5" and time.monotonic() - t0 < 60
        assert c.get("/v1/ready").status_code == 503
    finally:
        c.__exit__(None, None, None)
        milvus_server.start()  # same base dir; the port may differ (see MilvusServerHandle)
    again = client_for(settings())
    wait_ready(again)
    assert [_search_ids(again, catalog.centres[p]) for p in range(3)] == before
    assert again.get("/v1/stats", headers=ADMIN_H).json()["rows"] == len(catalog.images) - 3


def test_models_cli_direct_on_milvus(lite_settings, client_for, catalog, monkeypatch):
    """`shoplens models list|deprecate|retire|support|promote` straight on the Milvus in SHOPLENS_MILVUS_URI."""
    from typer.testing import CliRunner

    from shoplens.cli import app
    from shoplens.settings import get_settings

    settings = lite_settings()
    c = client_for(settings)
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    staged = c.post("/v1/catalog/collections", json={"model_id": MODEL_NEXT}, headers=ADMIN_H).json()["collection"]
    assert c.post(f"/v1/catalog/collections/{staged}/activate", params={"promote": "false"}, headers=ADMIN_H).json()["active"] is False
    c.__exit__(None, None, None)  # a Lite file is locked to one process/user: release it for the CLI
    monkeypatch.setenv("SHOPLENS_MILVUS_URI", settings.milvus_uri)
    monkeypatch.setenv("SHOPLENS_COLLECTION", settings.collection)
    get_settings.cache_clear()

    def run(*args: str) -> list[dict]:
        result = CliRunner().invoke(app, ["models", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert [(m["model_id"], m["status"]) for m in run("list")] == [(MODEL, "current"), (MODEL_NEXT, "supported")]
    assert run("deprecate", MODEL_NEXT, "--sunset", "2027-01-15")[0]["sunset"] == "2027-01-15"
    assert run("retire", MODEL_NEXT)[0]["status"] == "retired"
    refused = CliRunner().invoke(app, ["models", "retire", MODEL])
    assert refused.exit_code == 1 and "promote another model first" in refused.output
    assert run("support", MODEL_NEXT)[0]["status"] == "supported"
    promoted = run("promote", MODEL_NEXT, "--bundle-url", "https://cdn.example/next.zip")[0]
    assert (promoted["status"], promoted["bundle_url"]) == ("current", "https://cdn.example/next.zip")
    assert [(m["model_id"], m["status"]) for m in run("list")] == [(MODEL_NEXT, "current"), (MODEL, "supported")]
