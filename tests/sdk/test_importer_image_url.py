"""The importer never puts a local path into image_url, and the catalog reader refuses bad ones by line.

Real bundle (the MobileNet reference embedder), real Grocery Store images and
an in-memory sink like test_importer.py's.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from shoplens.contract.schemas import CatalogImage
from shoplens.sdk.catalog import CatalogEntry, CatalogError, read_catalog
from shoplens.sdk.importer import import_catalog


class ListSink:
    """Keeps acknowledged writes in memory, keyed like the index (upsert by image id)."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.rows: dict[str, CatalogImage] = {}

    def upsert(self, images: list[CatalogImage]) -> None:
        self.rows.update((img.image_id, img) for img in images)


def _images(grocery_dir: Path, n: int) -> list[tuple[str, Path]]:
    rows = list(csv.DictReader((grocery_dir / "classes.csv").open()))[:n]
    return [(r["Class Name (str)"], grocery_dir / r["Iconic Image Path (str)"].lstrip("/")) for r in rows]


def _model_id(bundle: Path) -> str:
    from shoplens.contract.manifest import load_manifest

    return load_manifest(bundle).embedder.model_id  # type: ignore[union-attr]


def test_no_image_url_column_stores_empty_never_the_local_path(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    items = _images(grocery_dir, 2)
    cat = tmp_path / "catalog.csv"
    cat.write_text("product_id,image,title\n" + "".join(f"{pid},{path},{pid}\n" for pid, path in items))
    with_url = tmp_path / "with_url.jsonl"
    with_url.write_text(json.dumps({"product_id": "p", "image": str(items[0][1]), "image_url": " https://cdn.example/p.jpg "}) + "\n")

    sink = ListSink(_model_id(mobilenet_bundle))
    s = import_catalog(read_catalog(cat), embedder=mobilenet_bundle, detector=None, sink=sink, state_path=tmp_path / "s.db", progress=False)
    assert s.imported == 2
    assert [img.image_url for img in sink.rows.values()] == ["", ""]

    sink = ListSink(_model_id(mobilenet_bundle))
    import_catalog(read_catalog(with_url), embedder=mobilenet_bundle, detector=None, sink=sink, state_path=tmp_path / "u.db", progress=False)
    assert [img.image_url for img in sink.rows.values()] == ["https://cdn.example/p.jpg"]


@pytest.mark.parametrize("url", ["javascript:alert(1)", "file:///etc/passwd", "/srv/shop/1.jpg", "\\\\host\\share\\1.jpg"])
def test_bad_image_url_is_an_error_naming_the_row_and_field(tmp_path: Path, url: str) -> None:
    cat = tmp_path / "catalog.csv"
    with cat.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "image_url"])
        w.writerow(["p1", "a.jpg", "https://cdn.example/a.jpg"])
        w.writerow(["p2", "b.jpg", url])
    with pytest.raises(CatalogError, match=r"^\[validation_error\] line 3: image_url .*must be empty or an absolute https://") as info:
        list(read_catalog(cat))
    assert repr(url[:80]) in info.value.message

    jl = tmp_path / "catalog.jsonl"
    jl.write_text(json.dumps({"product_id": "p1", "image": "a.jpg", "image_url": url}) + "\n")
    with pytest.raises(CatalogError, match="line 1: image_url"):
        list(read_catalog(jl))


def test_http_image_url_follows_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoplens.settings import get_settings

    cat = tmp_path / "catalog.jsonl"
    cat.write_text(json.dumps({"product_id": "p1", "image": "a.jpg", "image_url": "http://cdn.example/a.jpg"}) + "\n")
    with pytest.raises(CatalogError, match="line 1: image_url is an http:// URL"):
        list(read_catalog(cat))
    assert [e.image_url for e in read_catalog(cat, allow_http_image_urls=True)] == ["http://cdn.example/a.jpg"]
    monkeypatch.setenv("SHOPLENS_ALLOW_HTTP_IMAGE_URLS", "true")
    get_settings.cache_clear()
    assert [e.image_url for e in read_catalog(cat)] == ["http://cdn.example/a.jpg"]


def test_entries_built_in_code_with_a_bad_url_fail_alone(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    """Entries that skip the reader (the demo builds its own) are checked too: that image is
    reported as failed, the others are indexed, and the run does not abort."""
    (pid, path), (pid2, path2) = _images(grocery_dir, 2)
    entries = [CatalogEntry(pid, str(path), image_url="javascript:alert(1)"), CatalogEntry(pid2, str(path2))]
    sink = ListSink(_model_id(mobilenet_bundle))
    s = import_catalog(entries, embedder=mobilenet_bundle, detector=None, sink=sink, state_path=tmp_path / "s.db", progress=False)
    assert s.imported == 1 and [img.product_id for img in sink.rows.values()] == [pid2]
    ((image, reason),) = s.failed
    assert image == str(path) and "image_url is a javascript: URL" in reason
