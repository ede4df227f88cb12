"""The catalog's ``role`` column: one file serves `shoplens index` (catalog images) and `shoplens embedder train`
(plus labelled shopper photos); the import never embeds a labelled photo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoplens.sdk.catalog import CatalogError, read_catalog
from shoplens.sdk.importer import import_catalog
from test_importer import ListSink, _iconic


def test_role_defaults_to_catalog_and_an_unknown_role_names_its_line(tmp_path: Path) -> None:
    cat = tmp_path / "c.csv"
    cat.write_text("product_id,image,role\np1,a.jpg,\np1,b.jpg,Photo\np1,c.jpg,val\np2,d.jpg,catalog\n")
    entries = list(read_catalog(cat))
    assert [(e.role, e.indexed) for e in entries] == [("catalog", True), ("photo", False), ("val", False), ("catalog", True)]
    assert all(e.attributes == {} for e in entries)  # role is a column of the format, not a free attribute
    (no_column,) = read_catalog(_write(tmp_path / "n.csv", "product_id,image\np1,a.jpg\n"))
    assert no_column.role == "catalog"
    cat.write_text("product_id,image,role\np1,a.jpg,\np1,b.jpg,shelf\n")
    with pytest.raises(CatalogError, match="line 3: role 'shelf' is not one of catalog, photo, val"):
        list(read_catalog(cat))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_import_skips_labelled_photos_and_counts_them(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    from shoplens.contract.manifest import load_manifest

    items = _iconic(grocery_dir, 3)
    train_photo = grocery_dir / (grocery_dir / "train.txt").read_text().split(",")[0]
    rows = [{"product_id": pid, "image": str(path)} for pid, path in items]
    rows += [{"product_id": items[0][0], "image": str(train_photo), "role": "photo"},
             {"product_id": items[1][0], "image": str(tmp_path / "never-read.jpg"), "role": "val"}]  # not read at all: no failure
    cat = tmp_path / "catalog.jsonl"
    cat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sink = ListSink(load_manifest(mobilenet_bundle).embedder.model_id)
    s = import_catalog(read_catalog(cat), embedder=mobilenet_bundle, detector=None, sink=sink, state_path=tmp_path / "s.db", progress=False)
    assert (s.total, s.imported, s.not_indexed, s.failed) == (5, 3, 2, [])
    assert sorted(img.product_id for img in sink.rows.values()) == sorted(pid for pid, _ in items)
