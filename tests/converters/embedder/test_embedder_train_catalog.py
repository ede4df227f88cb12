"""Training from a shop's catalog (the CSV / JSONL `shoplens index` reads, with role=photo/val rows), end to end:
train -> checkpoint that records its data -> bundle -> `shoplens index` and the demo; and bad rows stopping it before any work."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shop_catalogs import PHOTOS, PRODUCTS, VAL, catalog_rows, shop_folder, write_csv, write_jsonl
from shoplens.converters.embedder.data import CatalogDataError, load_catalog
from shoplens.converters.embedder.model import load_checkpoint
from shoplens.converters.embedder.train import TrainConfig, check_data, train, training_photos

CATALOG_IMAGES = len(PRODUCTS) + 2  # two products have a second catalog image
LABELLED = len(PRODUCTS) * (PHOTOS + VAL)
SMALL = ["--input-size", "64", "--dim", "32", "--epochs", "1", "--max-steps", "3", "--batch-size", "16", "--classes-per-batch", "4",
         "--photo-views", "2", "--iconic-views", "4"]


@pytest.fixture(scope="module")
def shop(grocery_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = shop_folder(grocery_dir, tmp_path_factory.mktemp("shop") / "shop")
    rows = catalog_rows(grocery_dir)
    write_csv(root / "catalog.csv", rows)
    write_jsonl(root / "catalog.jsonl", rows)
    return root


def _train_cli(catalog: Path, out: Path, cache: Path, *extra: str) -> str:
    from shoplens.cli import app

    res = CliRunner().invoke(app, ["embedder", "train", "--catalog", str(catalog), "--out", str(out), "--cache-dir", str(cache), *SMALL, *extra])
    assert res.exit_code == 0, res.output
    return res.output


def test_shop_catalog_reads_string_ids_several_catalog_images_and_labelled_photos(shop: Path) -> None:
    csv_cat, jsonl_cat = load_catalog(shop / "catalog.csv"), load_catalog(shop / "catalog.jsonl")
    assert csv_cat.format == "csv" and jsonl_cat.format == "jsonl"
    assert csv_cat.names == jsonl_cat.names and sorted(csv_cat.names.values()) == list(csv_cat.names.values())  # ids in product id order
    assert sorted(len(v) for v in csv_cat.images.values()) == [1, 1, 1, 1, 2, 2]
    assert len(csv_cat.iconic_samples()) == CATALOG_IMAGES
    assert len(csv_cat.split("train")) == len(PRODUCTS) * PHOTOS and len(csv_cat.split("val")) == len(PRODUCTS) * VAL
    assert csv_cat.categories[csv_cat.iconic_samples()[0].product]
    # views are per product: a product with two catalog images gets half the views of each
    two = next(p for p, v in csv_cat.images.items() if len(v) == 2)
    one = next(p for p, v in csv_cat.images.items() if len(v) == 1)
    assert csv_cat.views_per_image(two, 16) == 8 and csv_cat.views_per_image(one, 16) == 16 and csv_cat.views_per_image(two, 1) == 1
    # the same rows in either format are the same data: the recorded hash does not depend on the file
    cfg = TrainConfig(catalog=shop / "catalog.csv", out=shop / "unused.pt", input_size=64)
    a = check_data(cfg, csv_cat, training_photos(cfg, csv_cat))
    b = check_data(dataclasses.replace(cfg, catalog=shop / "catalog.jsonl"), jsonl_cat, training_photos(cfg, jsonl_cat))
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    assert (a.products, a.catalog_images, a.photos, a.val_photos) == (len(PRODUCTS), CATALOG_IMAGES, len(PRODUCTS) * PHOTOS, len(PRODUCTS) * VAL)
    with pytest.raises(CatalogDataError, match="no split 'test'"):
        csv_cat.split("test")


@pytest.mark.slow
def test_train_from_jsonl_into_a_bundle_that_index_and_the_demo_accept_on_the_csv(shop: Path, tmp_path: Path) -> None:
    """JSONL catalog -> `shoplens embedder train` (the default --select best, on its role=val photos) -> checkpoint recording its
    data -> `shoplens convert embedder` gated on the CSV of the same rows -> `shoplens index` of that CSV and `shoplens demo`.
    (The CSV trains in test_a_catalog_without_val_trains_with_no_eval_and_other_data_is_not_resumed.)"""
    from shoplens.cli import app
    from shoplens.contract.manifest import load_manifest, verify_bundle

    _train_cli(shop / "catalog.jsonl", tmp_path / "shop.pt", tmp_path / "cache")
    model, blob = load_checkpoint(tmp_path / "shop.pt")
    meta = blob["config"]["meta"]
    record = meta["catalog"]
    assert record["path"] == str(shop / "catalog.jsonl") and record["format"] == "jsonl" and len(record["sha256"]) == 64
    assert (record["products"], record["catalog_images"], record["photos"], record["val_photos"]) == (len(PRODUCTS), CATALOG_IMAGES, len(PRODUCTS) * PHOTOS,
                                                                                                     len(PRODUCTS) * VAL)
    assert meta["selection"].startswith("best val") and meta["metrics"]["queries"] == len(PRODUCTS) * VAL
    assert np.isfinite(meta["metrics"]["photo_iconic_r@1"]) and model.config.dim == 32 and model.config.input_size == 64

    bundles = tmp_path / "bundles"
    out = bundles / "shop-embedder"
    res = CliRunner().invoke(app, ["convert", "embedder", "--checkpoint", str(tmp_path / "shop.pt"), "--targets", "tflite", "--precision", "fp32",
                                   "--out", str(out), "--parity-catalog", str(shop / "catalog.csv"), "--parity-photos", "12"])
    assert res.exit_code == 0, res.output
    manifest = verify_bundle(out)
    assert manifest.artifacts[0].publishable and manifest.artifacts[0].parity.metrics["retrieval_queries"] == len(PRODUCTS) * VAL
    model_id = load_manifest(out).embedder.model_id

    # `shoplens index` (straight into a Milvus Lite file): catalog images in, labelled photos skipped and said so
    env = {**os.environ, "SHOPLENS_MILVUS_URI": str(tmp_path / "index.db"), "SHOPLENS_COLLECTION": "shop", "COLUMNS": "250"}
    idx = subprocess.run([sys.executable, "-m", "shoplens", "index", "--catalog", str(shop / "catalog.csv"), "--embedder", str(out), "--no-detector",
                          "--state", str(tmp_path / "s.db"), "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert idx.returncode == 0, idx.stdout + idx.stderr
    assert f"{CATALOG_IMAGES} imported" in idx.stdout and f"{LABELLED} labelled shopper photos (role photo/val) not indexed" in idx.stdout, idx.stdout
    assert f"model {model_id}" in idx.stdout

    # the demo runs on the bundle folder: it finds the new embedder there, indexes and searches with it
    demo_env = {**os.environ, "SHOPLENS_CACHE_DIR": str(tmp_path / "demo-cache"), "COLUMNS": "250"}
    demo = subprocess.run([sys.executable, "-m", "shoplens", "demo", "--bundle", str(bundles), "--products", "2", "--queries", "2", "--workers", "1",
                           "--report", str(tmp_path / "report.html"), "--no-progress"], capture_output=True, text=True, timeout=300, env=demo_env)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert f"embedder shop-embedder ({model_id})" in demo.stdout
    assert re.search(r"recall@1 \(product\)\s+│\s+[01]\.\d{3}", demo.stdout), demo.stdout


def _bad(shop: Path, tmp_path: Path, rows: list[dict[str, str]], fmt: str = "csv") -> Path:
    """A catalog file beside the good ones (same images link), with ``rows``."""
    path = shop / f"bad-{tmp_path.name}.{fmt}"
    return write_csv(path, rows) if fmt == "csv" else write_jsonl(path, rows)


def _cases(shop: Path, tmp_path: Path, grocery_dir: Path) -> dict[str, tuple[list[dict[str, str]], list[str]]]:
    """name -> (rows, what the error must say); the first row of each product is its catalog row (line 2 in a CSV)."""
    good = catalog_rows(grocery_dir)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture at all")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((shop / good[0]["image"]).read_bytes()[:400])
    photo = next(r for r in good if r["role"] == "photo")
    return {
        "missing image": (good + [{**photo, "image": "images/no-such-photo.jpg"}], [f"line {len(good) + 2}", "image file not found", "no-such-photo.jpg"]),
        "not an image": (good + [{**photo, "image": str(broken)}], [f"line {len(good) + 2}", "not a recognised image format", "broken.jpg"]),
        "truncated image": ([{**good[0], "image": str(truncated)}] + good[1:], ["line 2", "corrupt or truncated image", "truncated.jpg"]),
        "unknown product": (good + [{**photo, "product_id": "Ghost-Cola", "image": "images/ghost-cola.jpg"}], [f"line {len(good) + 2}", "unknown product 'Ghost-Cola'", "role=photo"]),
        "duplicate row": (good + [dict(good[3])], [f"line {len(good) + 2}", "duplicate row", "already listed on line 5"]),
        "empty catalog": ([], ["has no rows"]),
        "one product": ([r for r in good if r["product_id"] == good[0]["product_id"]], ["1 product(s) with a catalog image", "at least 2"]),
        "unknown role": (good + [{**photo, "role": "shelf"}], [f"line {len(good) + 2}", "role 'shelf' is not one of catalog, photo, val"]),
        "remote image": (good + [{**photo, "image": "https://cdn.example/p.jpg"}], [f"line {len(good) + 2}", "is a URL"]),
    }


CASES = ("missing image", "not an image", "truncated image", "unknown product", "duplicate row", "empty catalog", "one product", "unknown role", "remote image")


@pytest.mark.parametrize("case", CASES)
def test_a_bad_catalog_row_exits_2_naming_it_before_anything_is_written(case: str, shop: Path, grocery_dir: Path, tmp_path: Path) -> None:
    from shoplens.cli import app

    rows, expected = _cases(shop, tmp_path, grocery_dir)[case]
    catalog = _bad(shop, tmp_path, rows)
    out, cache = tmp_path / "out" / "ck.pt", tmp_path / "cache"
    res = CliRunner().invoke(app, ["embedder", "train", "--catalog", str(catalog), "--out", str(out), "--cache-dir", str(cache), *SMALL])
    assert res.exit_code == 2, res.output
    assert str(catalog) in res.output and all(e in res.output for e in expected), res.output
    assert not out.parent.exists() and not cache.exists()  # no checkpoint, no state file, no feature cache


def test_every_bad_row_is_reported_at_once_and_jsonl_errors_name_the_file(shop: Path, grocery_dir: Path, tmp_path: Path) -> None:
    good = catalog_rows(grocery_dir)
    photo = next(r for r in good if r["role"] == "photo")
    rows = good + [{**photo, "product_id": "Ghost-Cola", "image": "images/ghost.jpg"}, dict(good[1])]
    catalog = _bad(shop, tmp_path, rows, "jsonl")
    with pytest.raises(CatalogDataError) as err:  # row rules first: the unknown product and the duplicate together
        load_catalog(catalog)
    msg = str(err.value)
    assert msg.startswith("2 bad catalog rows") and f"{catalog} line {len(good) + 1}: unknown product" in msg and f"line {len(good) + 2}: duplicate row" in msg
    catalog.write_text(catalog.read_text() + "{not json\n")
    with pytest.raises(CatalogDataError, match=re.escape(f"{catalog}:{len(rows) + 1}: not JSON")):
        load_catalog(catalog)
    # image problems: every unreadable image at once, each with its line
    catalog = _bad(shop, tmp_path, good + [{**photo, "image": "images/gone.jpg"}, {**photo, "image": "images/gone-too.jpg"}], "jsonl")
    cat = load_catalog(catalog)
    cfg = TrainConfig(catalog=catalog, out=tmp_path / "x.pt", input_size=64)
    with pytest.raises(CatalogDataError, match=r"2 unreadable catalog images") as err:
        check_data(cfg, cat, training_photos(cfg, cat))
    assert f"line {len(good) + 1}: image file not found" in str(err.value) and f"line {len(good) + 2}: image file not found" in str(err.value)


def test_without_val_photos_the_default_selection_and_the_parity_gate_exit_2(shop: Path, grocery_dir: Path, tmp_path: Path) -> None:
    from shoplens.cli import app

    catalog = _bad(shop, tmp_path, [r for r in catalog_rows(grocery_dir) if r["role"] != "val"])
    out, cache = tmp_path / "ck.pt", tmp_path / "cache"
    res = CliRunner().invoke(app, ["embedder", "train", "--catalog", str(catalog), "--out", str(out), "--cache-dir", str(cache), *SMALL])
    assert res.exit_code == 2 and "no val photos" in res.output and "--no-eval" in res.output, res.output
    assert not out.exists() and not cache.exists()
    # the parity gate needs them too
    res = CliRunner().invoke(app, ["convert", "embedder", "--checkpoint", str(out), "--out", str(tmp_path / "b"), "--parity-catalog", str(catalog)])
    assert res.exit_code == 2 and "no val photos" in res.output and not (tmp_path / "b").exists(), res.output


def test_a_catalog_without_val_trains_with_no_eval_and_other_data_is_not_resumed(shop: Path, grocery_dir: Path, tmp_path: Path,
                                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """No role=val rows: --no-eval trains (the last epoch). Then same options, same catalog path, other images behind it:
    the run starts over instead of resuming the state file's foreign weights (an unchanged catalog resumes: test_embedder_train)."""
    import logging

    rows = [r for r in catalog_rows(grocery_dir) if r["role"] != "val"]
    catalog = _bad(shop, tmp_path, rows)
    cfg = TrainConfig(catalog=catalog, out=tmp_path / "ck.pt", cache_dir=tmp_path / "cache", input_size=64, dim=32, epochs=1, max_steps=2,
                      batch_size=16, classes_per_batch=4, photo_views=1, iconic_views=2, evaluate=False, select="last")
    first = train(cfg)
    assert len(first.step_losses) == 2 and first.selected_epoch == 1
    before = load_checkpoint(cfg.out)[1]["config"]["meta"]["catalog"]
    assert before["val_photos"] == 0 and before["photos"] == len(PRODUCTS) * PHOTOS
    photo = next(i for i, r in enumerate(rows) if r["role"] == "photo")
    other = next(r for r in catalog_rows(grocery_dir) if r["role"] == "val" and r["product_id"] == rows[photo]["product_id"])
    write_csv(catalog, rows[:photo] + [{**rows[photo], "image": other["image"]}] + rows[photo + 1 :])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shoplens.embedder.train"):
        third = train(cfg)
    assert "written from other catalog data" in caplog.text and "resumed from" not in caplog.text, caplog.text
    assert len(third.step_losses) == 2
    _, blob = load_checkpoint(cfg.out)
    assert blob["config"]["meta"]["catalog"]["sha256"] != before["sha256"]
