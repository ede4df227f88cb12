"""image_url over HTTP: bad URLs are a 422 that writes nothing, http:// is the operator's choice,
and stored rows that break the rule (written before it existed) never send their path to a phone."""

from __future__ import annotations

from typing import Any

import pytest

from shoplens.contract.schemas import CatalogImage

from cloudkit import ADMIN_H, DEVICE_H, MODEL, Catalog, query

BAD_URLS = {
    "file": "file:///etc/passwd",
    "javascript": "javascript:alert(1)",
    "data": "data:image/png;base64,iVBORw0KGgo=",
    "abs-path": "/home/shop/catalog/1.jpg",
    "relative": "images/1.jpg",
    "windows-drive": "C:\\catalog\\1.jpg",
    "unc": "\\\\host\\share\\1.jpg",
    "no-host": "https:///1.jpg",
    "space": "https://cdn.example/a b.jpg",
    "userinfo": "https://user:pass@cdn.example/1.jpg",
}


def _with_url(catalog: Catalog, index: int, url: str) -> dict[str, Any]:
    return dict(catalog.images[index], image_url=url)


def _rows(c: Any) -> int:
    return int(c.get("/v1/stats", headers=ADMIN_H).json()["rows"])


def _error(r: Any) -> dict[str, Any]:
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    return err


@pytest.fixture
def seeded_lite(lite_settings, client_for, catalog):
    c = client_for(lite_settings())
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    return c, catalog


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
def test_bad_image_url_is_422_naming_the_field_and_writes_nothing(seeded_lite, url):
    c, catalog = seeded_lite
    before = _rows(c)
    # a valid new image first: the whole request is refused, not just the bad row
    fresh = dict(catalog.images[0], image_id="img-new", product_id="prod-new")
    body = {"model_id": MODEL, "images": [fresh, _with_url(catalog, 1, url)]}
    err = _error(c.put("/v1/catalog/images", json=body, headers=ADMIN_H))
    assert "images.1.image_url" in err["message"] and "https://" in err["message"], err["message"]
    assert _rows(c) == before
    assert c.get("/v1/catalog/products/prod-new", headers=DEVICE_H).status_code == 404
    stored = c.get("/v1/catalog/products/prod-0", headers=DEVICE_H).json()["images"]
    assert {img["image_url"] for img in stored} == {f"https://cdn.example/{img['image_id']}.jpg" for img in stored}


def test_http_image_url_refused_by_default_accepted_when_allowed(tmp_path, lite_settings, client_for, catalog):
    strict = client_for(lite_settings())
    body = {"model_id": MODEL, "images": [catalog.images[0], _with_url(catalog, 1, "http://cdn.example/1.jpg")]}
    err = _error(strict.put("/v1/catalog/images", json=body, headers=ADMIN_H))
    assert err["message"].startswith("images[1].image_url is an http:// URL"), err["message"]
    assert err["details"] == {"index": 1, "field": "image_url"}
    # the first upsert would have created the collection: a refused one must not
    assert strict.get("/v1/catalog/collections", headers=ADMIN_H).json() == []

    allowing = client_for(lite_settings(allow_http_image_urls=True, milvus_uri=str(tmp_path / "allowing.db")))
    assert allowing.put("/v1/catalog/images", json=body, headers=ADMIN_H).status_code == 200
    hits = allowing.post("/v1/search", json=query(catalog.vectors["img-0-1"], top_k=1), headers=DEVICE_H).json()["hits"]
    assert hits[0]["image_url"] == "http://cdn.example/1.jpg"


def test_allow_http_image_urls_reads_its_env_var(monkeypatch):
    from shoplens.settings import Settings

    assert Settings().allow_http_image_urls is False
    monkeypatch.setenv("SHOPLENS_ALLOW_HTTP_IMAGE_URLS", "1")
    assert Settings().allow_http_image_urls is True


LEGACY = {"img-0-0": "/home/shop/catalog/0.jpg", "img-0-1": "file:///etc/passwd", "img-0-2": "javascript:alert(1)"}


def test_rows_stored_with_bad_urls_come_back_without_them(backend, client_for, catalog):
    """Rows written before the rule (straight through the store, as the old importer did) keep
    their path in Milvus, but search hits and the product endpoint return image_url ""."""
    _, make = backend
    c = client_for(make())
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    store = c.app.state.shoplens.store
    # model_construct skips validation: what the old importer wrote, straight through the real store
    legacy = [CatalogImage.model_construct(**dict(img, image_url=LEGACY[img["image_id"]])) for img in catalog.images if img["image_id"] in LEGACY]
    assert store.upsert(store.require_binding(), legacy) == 3

    got = c.get("/v1/catalog/products/prod-0", headers=DEVICE_H).json()["images"]
    assert [img["image_url"] for img in got] == ["", "", ""]
    for image_id in LEGACY:
        hits = c.post("/v1/search", json=query(catalog.vectors[image_id], top_k=3), headers=DEVICE_H).json()["hits"]
        assert hits[0]["image_id"] == image_id and hits[0]["image_url"] == ""
        assert hits[1]["image_url"].startswith("https://cdn.example/")  # good rows are untouched
    vector = query(catalog.vectors["img-0-1"])["vector"]
    batch = c.post("/v1/search/batch", json={"model_id": MODEL, "vectors": [vector], "encoding": "i8"}, headers=DEVICE_H)
    assert batch.json()["results"][0]["hits"][0]["image_url"] == ""
