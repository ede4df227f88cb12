"""Issue 33's service findings, each on both backends: the served collection cannot be dropped by
its alias, bodies Milvus cannot hold are 422s, grouped search fills ``top_k`` products, written rows
are sealed without anyone calling flush, and requests during a collection load get a 503."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shoplens.contract.codecs import encode_vector

from cloudkit import ADMIN_H, DEVICE_H, DIM, MODEL, MODEL_NEXT, query, wait_ready


def _metric(c, name: str, **labels: str) -> float:
    """A sample of the service's /metrics (a missing metric fails the test; a missing label set is 0)."""
    text = c.get("/metrics").text
    assert f"# TYPE {name.removesuffix('_count')} " in text, f"no metric {name}"
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want if want else "")) and not line.startswith("#"):
            if want or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- the served collection under any name ---------------------------------------------


def test_deleting_the_alias_name_is_refused_and_the_catalog_survives(backend, client_for, catalog):
    _, make = backend
    settings = make()
    c = client_for(settings)
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    served = [m for m in c.get("/v1/catalog/collections", headers=ADMIN_H).json() if m["active"]][0]["collection"]

    for name in (settings.collection, served):  # the alias itself, and the physical name
        r = c.delete(f"/v1/catalog/collections/{name}", headers=ADMIN_H)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text
        assert "served" in r.json()["error"]["message"]
    r = c.post("/v1/search", json=query(catalog.centres[2], top_k=3), headers=DEVICE_H)
    assert r.status_code == 200 and r.json()["hits"][0]["product_id"] == "prod-2"

    # activating by the alias name is a no-op on the physical collection, not a self-alias
    r = c.post(f"/v1/catalog/collections/{settings.collection}/activate", headers=ADMIN_H)
    assert r.status_code == 200 and r.json()["collection"] == served

    # a staged collection that is not served can still be dropped
    staged = c.post("/v1/catalog/collections", json={"model_id": MODEL_NEXT}, headers=ADMIN_H).json()["collection"]
    assert c.delete(f"/v1/catalog/collections/{staged}", headers=ADMIN_H).json() == {"deleted": 1}

    c.__exit__(None, None, None)
    again = client_for(settings)
    wait_ready(again)
    assert again.get("/v1/stats", headers=ADMIN_H).json()["rows"] == len(catalog.images)


def test_a_collection_reached_through_another_alias_is_not_dropped(backend, client_for, catalog):
    """Another service (its own alias) may serve a collection of ours: dropping it would break that one."""
    from pymilvus import MilvusClient

    _, make = backend
    settings = make()
    c = client_for(settings)
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    staged = c.post("/v1/catalog/collections", json={"model_id": MODEL_NEXT}, headers=ADMIN_H).json()["collection"]
    store = c.app.state.shoplens.store
    other_alias = f"{settings.collection}_other"
    with store._call("create_alias") as milvus:  # the service's own client: a Lite file has one owner
        assert isinstance(milvus, MilvusClient)
        milvus.create_alias(staged, other_alias)
    try:
        r = c.delete(f"/v1/catalog/collections/{staged}", headers=ADMIN_H)
        assert r.status_code == 422 and other_alias in r.json()["error"]["message"], r.text
    finally:
        with store._call("drop_alias") as milvus:
            milvus.drop_alias(other_alias)
    assert c.delete(f"/v1/catalog/collections/{staged}", headers=ADMIN_H).status_code == 200


# ---- values JSON carries and Milvus cannot hold -------------------------------------------

BAD_TEXT = "\ud800"


@pytest.mark.parametrize(
    "where",
    ["category_in", "attribute_key", "attribute_value", "attribute_inf", "attribute_huge_int"],
)
def test_unstorable_search_filters_are_422(backend, client_for, catalog, where):
    _, make = backend
    c = client_for(make())
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    filters = {
        "category_in": {"category_in": ["shoes", BAD_TEXT]},
        "attribute_key": {"attributes": {BAD_TEXT: "red"}},
        "attribute_value": {"attributes": {"colour": BAD_TEXT}},
        "attribute_inf": {"attributes": {"size": float("inf")}},
        "attribute_huge_int": {"attributes": {"size": 10**30}},
    }[where]
    single = query(catalog.centres[0], filters=filters)
    batch = {**{k: v for k, v in single.items() if k != "vector"}, "vectors": [single["vector"]]}
    for path, body in (("/v1/search", single), ("/v1/search/batch", batch)):
        r = c.post(path, content=_json(body), headers={**DEVICE_H, "content-type": "application/json"})
        assert r.status_code == 422, (path, r.status_code, r.text[:300])
        assert r.json()["error"]["code"] == "validation_error"
        assert "filters" in r.json()["error"]["message"]


@pytest.mark.parametrize("field,value", [("title", BAD_TEXT), ("attributes", {"k": BAD_TEXT}),
                                         ("attributes", {BAD_TEXT: 1}), ("attributes", {"n": 10**20}),
                                         ("price", float("inf")), ("attributes", {"x": float("nan")})])
def test_unstorable_upserts_are_422_and_write_nothing(backend, client_for, catalog, field, value):
    _, make = backend
    c = client_for(make())
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    bad = dict(catalog.images[0], image_id="new-image", **{field: value})
    body = {"model_id": MODEL, "images": [catalog.images[1], bad]}
    r = c.put("/v1/catalog/images", content=_json(body), headers={**ADMIN_H, "content-type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    assert r.json()["error"]["code"] == "validation_error" and f"images.1.{field}" in r.json()["error"]["message"]
    assert c.get("/v1/stats", headers=ADMIN_H).json()["rows"] == len(catalog.images)
    assert c.get("/v1/catalog/products/prod-0", headers=DEVICE_H).status_code == 200  # the service still answers


def _json(body: object) -> bytes:
    """JSON as a client may send it: lone surrogates as \\ud800 escapes, NaN/Infinity literals, any int."""
    import json

    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode()


# ---- grouped search fills top_k -----------------------------------------------------------


def test_grouped_search_returns_top_k_products_when_one_product_has_many_images(backend, client_for):
    """A product with 60 images right around the query must not crowd the other products out."""
    _, make = backend
    c = client_for(make())
    rng = np.random.default_rng(5)
    q = rng.normal(size=DIM)
    q /= np.linalg.norm(q)
    images = []
    for p in range(8):  # product 0: 60 near-copies of the query; products 1..7: 3 images each, further away
        n = 60 if p == 0 else 3
        spread = 0.02 if p == 0 else 0.6 + 0.05 * p
        for j in range(n):
            v = q + spread * rng.normal(size=DIM)
            v /= np.linalg.norm(v)
            images.append({"image_id": f"i{p}-{j}", "product_id": f"p{p}", "vector": encode_vector(v, "f32"),
                           "encoding": "f32", "category": "even" if p % 2 == 0 else "odd"})
    assert c.put("/v1/catalog/images", json={"model_id": MODEL, "images": images}, headers=ADMIN_H).status_code == 200
    c.post("/v1/catalog/flush", headers=ADMIN_H)

    for top_k in (5, 8):
        r = c.post("/v1/search", json=query(q, top_k=top_k), headers=DEVICE_H)
        pids = [h["product_id"] for h in r.json()["hits"]]
        assert pids[0] == "p0" and len(pids) == len(set(pids)) == top_k, pids
    single = query(q, top_k=5)
    r = c.post("/v1/search/batch", json={"vectors": [single.pop("vector")] * 2, **single}, headers=DEVICE_H)
    assert [len(o["hits"]) for o in r.json()["results"]] == [5, 5]
    # fewer products than asked exist: every one of them, once, and the rounds stop
    r = c.post("/v1/search", json=query(q, top_k=20), headers=DEVICE_H)
    assert sorted(h["product_id"] for h in r.json()["hits"]) == [f"p{p}" for p in range(8)]
    # a filter leaves 4 products (p0, p2, p4, p6)
    r = c.post("/v1/search", json=query(q, top_k=5, filters={"category_in": ["even"]}), headers=DEVICE_H)
    assert sorted(h["product_id"] for h in r.json()["hits"]) == ["p0", "p2", "p4", "p6"]
    # min_score bounds the rounds: only products above it
    r = c.post("/v1/search", json=query(q, top_k=5, encoding="f32", min_score=0.95), headers=DEVICE_H)
    assert [h["product_id"] for h in r.json()["hits"]] == ["p0"]


# ---- automatic flush ----------------------------------------------------------------------


def test_written_rows_are_sealed_without_a_flush_call(backend, client_for, catalog):
    _, make = backend
    c = client_for(make(flush_interval_s=2, flush_rows=10_000))
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    assert _metric(c, "shoplens_unflushed_rows") == len(catalog.images)
    _assert_sealed_soon(c, flushes_before=_metric(c, "shoplens_milvus_call_seconds_count", op="flush"))


def test_many_unflushed_rows_are_sealed_at_once(backend, client_for, catalog):
    _, make = backend
    c = client_for(make(flush_interval_s=3600, flush_rows=20))
    flushes = _metric(c, "shoplens_milvus_call_seconds_count", op="flush")
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200  # 36 rows
    _assert_sealed_soon(c, flushes_before=flushes)


def _assert_sealed_soon(c, flushes_before: float, within_s: float = 20.0) -> None:
    """The unflushed gauge reaches 0 by a flush the service made itself."""
    deadline = time.monotonic() + within_s
    while _metric(c, "shoplens_unflushed_rows") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _metric(c, "shoplens_unflushed_rows") == 0
    assert _metric(c, "shoplens_milvus_call_seconds_count", op="flush") > flushes_before


def test_shutdown_flushes_and_a_start_seals_what_a_crash_left(backend, client_for, catalog):
    _, make = backend
    settings = make(flush_interval_s=3600, flush_rows=10_000)
    c = client_for(settings)
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    before = _metric(c, "shoplens_milvus_call_seconds_count", op="flush")
    state = c.app.state.shoplens
    c.__exit__(None, None, None)  # lifespan shutdown: the waiting rows are flushed
    assert _count(state, "flush") > before and state.flusher.unflushed == 0

    again = client_for(settings)  # start-up warm-up: load, then one flush for rows a crash left unsealed
    deadline = time.monotonic() + 20
    while _count(again.app.state.shoplens, "flush") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _count(again.app.state.shoplens, "flush") >= 1


def _count(state, op: str) -> float:
    for metric in state.metrics.milvus_seconds.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("op") == op:
                return sample.value
    return 0.0


# ---- requests while the collection loads --------------------------------------------------


def test_requests_during_a_load_get_503_with_retry_after(lite_settings, client_for, catalog):
    settings = lite_settings(load_wait_s=0.3)
    c = client_for(settings)
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    store = c.app.state.shoplens.store
    served = store.binding(refresh=True).collection
    with store._lock:
        store._loaded.discard(served)  # as after a start: the collection must be loaded again
    store._forget_routes()
    lock = store._load_lock(served)
    assert lock.acquire(timeout=5)  # another request is loading it right now
    try:
        for r in (c.post("/v1/search", json=query(catalog.centres[0]), headers=DEVICE_H),
                  c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H),
                  c.get("/v1/ready")):
            assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
            assert r.json()["error"]["code"] == "backend_unavailable" and "loading" in r.json()["error"]["message"]
    finally:
        lock.release()
    assert c.post("/v1/search", json=query(catalog.centres[0]), headers=DEVICE_H).status_code == 200
    assert c.get("/v1/ready").status_code == 200


def test_concurrent_first_loads_call_load_collection_once(lite_settings, client_for, catalog):
    settings = lite_settings()
    c = client_for(settings)
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    store = c.app.state.shoplens.store
    served = store.binding(refresh=True).collection
    with store._lock:
        store._loaded.discard(served)
    store._forget_routes()
    client = store._connect()
    calls: list[float] = []
    real_load = client.load_collection

    def counting_load(name, *a, **kw):
        if name == served:
            calls.append(time.monotonic())
        time.sleep(0.3)  # a slow load: the other requests arrive while it runs
        return real_load(name, *a, **kw)

    client.load_collection = counting_load
    try:
        barrier = threading.Barrier(6)
        results: list[int] = []

        def first() -> None:
            barrier.wait(timeout=10)
            results.append(c.post("/v1/search", json=query(catalog.centres[1]), headers=DEVICE_H).status_code)

        threads = [threading.Thread(target=first) for _ in range(6)]
        [t.start() for t in threads]
        [t.join(timeout=30) for t in threads]
    finally:
        client.load_collection = real_load
    assert len(calls) == 1 and results == [200] * 6


def test_a_collection_released_behind_the_services_back_is_loaded_again(backend, client_for, catalog):
    """Milvus Lite was seen reporting a loaded collection as released after a restart; an operator can
    release one on a server. Reads and writes must load it again instead of answering 500."""
    _, make = backend
    c = client_for(make())
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    store = c.app.state.shoplens.store
    served = store.binding(refresh=True).collection
    checks = [
        lambda: c.post("/v1/search", json=query(catalog.centres[4], top_k=3), headers=DEVICE_H),
        lambda: c.get("/v1/catalog/products/prod-4", headers=DEVICE_H),
        lambda: c.get("/v1/stats", headers=ADMIN_H),
        lambda: c.put("/v1/catalog/images", json={"model_id": MODEL, "images": catalog.images[:3]}, headers=ADMIN_H),
        lambda: c.delete("/v1/catalog/images/img-7-2", headers=ADMIN_H),
    ]
    for check in checks:
        with store._call("release") as milvus:
            milvus.release_collection(served)
        r = check()
        assert r.status_code == 200, r.text[:300]
    assert c.post("/v1/search", json=query(catalog.centres[4], top_k=3), headers=DEVICE_H).json()["hits"][0]["product_id"] == "prod-4"


def test_a_lite_file_takes_one_write_at_a_time(lite_settings, client_for, catalog):
    """Concurrent writers tore Milvus Lite's WAL on kill -9, and a flush beside a write left the write in
    no WAL (benchmarks/soak.py: acknowledged writes lost); on a Lite file the store lets one write or
    flush through at a time."""
    c = client_for(lite_settings())
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    client = c.app.state.shoplens.store._connect()
    inside, most = [0], [0]
    guard = threading.Lock()
    real_upsert, real_delete, real_flush = client.upsert, client.delete, client.flush

    def watched(real):
        def call(*a, **kw):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            try:
                return real(*a, **kw)
            finally:
                with guard:
                    inside[0] -= 1
        return call

    client.upsert, client.delete, client.flush = watched(real_upsert), watched(real_delete), watched(real_flush)
    try:
        def write(i: int) -> int:
            if i % 3 == 2:
                return c.post("/v1/catalog/flush", headers=ADMIN_H).status_code
            if i % 3 == 1:
                return c.delete(f"/v1/catalog/images/img-{i}-0", headers=ADMIN_H).status_code
            return c.put("/v1/catalog/images", json={"model_id": MODEL, "images": catalog.images[i * 3:i * 3 + 3]}, headers=ADMIN_H).status_code

        with ThreadPoolExecutor(9) as pool:
            assert list(pool.map(write, range(9))) == [200] * 9
    finally:
        client.upsert, client.delete, client.flush = real_upsert, real_delete, real_flush
    assert most[0] == 1
