"""Catalog-only adaptation: synthesised shopper views, `shoplens embedder adapt` into a bundle that `shoplens index`
accepts and that can itself be adapted again, resuming, and bad input stopping it before any work."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from shop_catalogs import PRODUCTS, catalog_rows, shop_folder, write_csv
from shoplens.converters.embedder.adapt import BUNDLE_CHECKPOINT, AdaptConfig, adapt
from shoplens.converters.embedder.data import CatalogDataError, load_grocery
from shoplens.converters.embedder.model import load_checkpoint
from shoplens.converters.embedder.synthesis import SceneSource, cut_out, synthesise_view

CATALOG_IMAGES = len(PRODUCTS) + 2  # two products have a second catalog image (shop_catalogs)


@pytest.fixture(scope="module")
def shop(grocery_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = shop_folder(grocery_dir, tmp_path_factory.mktemp("adapt") / "shop")
    write_csv(root / "catalog.csv", catalog_rows(grocery_dir))
    return root


@pytest.fixture(scope="module")
def base(shop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real base model: the ImageNet trunk with a PCA head fitted on the catalog (small input, fast to convert)."""
    from shoplens.cli import app

    out = tmp_path_factory.mktemp("base") / "base.pt"
    res = CliRunner().invoke(app, ["embedder", "fit-head", "--catalog", str(shop / "catalog.csv"), "--out", str(out), "--input-size", "64",
                                   "--dim", "32", "--views", "6"])
    assert res.exit_code == 0, res.output
    return out


def test_cut_out_removes_a_studio_background_and_keeps_a_photo_whole(grocery_dir: Path) -> None:
    grocery = load_grocery(grocery_dir)
    studio = Image.open(grocery.images[0][0].path)  # an iconic image: the product on white
    cut = cut_out(studio)
    alpha = np.asarray(cut)[..., 3]
    assert cut.size[0] < studio.size[0] or cut.size[1] < studio.size[1]  # cropped to the product
    assert alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] == 255 and (alpha < 16).mean() > 0.05  # product opaque, corners clear
    shelf = Image.open(grocery.split("val")[0].path)  # a shelf photo has no plain background: kept whole
    assert np.asarray(cut_out(shelf))[..., 3].min() == 255


def test_synthesised_views_are_seeded_and_look_unlike_the_studio_image(grocery_dir: Path) -> None:
    grocery = load_grocery(grocery_dir)
    cut = cut_out(Image.open(grocery.images[0][0].path))
    src = SceneSource([], [cut_out(Image.open(grocery.images[13][0].path))])
    a = synthesise_view(cut, 96, random.Random(7), src)
    b = synthesise_view(cut, 96, random.Random(7), src)
    c = synthesise_view(cut, 96, random.Random(8), src)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # the white studio background is gone: a view's border is not near-white
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).astype(np.float32)
    assert (border.min(axis=1) > 235).mean() < 0.5


@pytest.mark.slow
def test_adapt_cli_writes_a_bundle_index_accepts_and_that_adapts_again(shop: Path, base: Path, tmp_path: Path) -> None:
    from shoplens.cli import app
    from shoplens.contract.manifest import load_manifest, verify_bundle

    out = tmp_path / "bundles" / "shop-adapted"
    args = ["embedder", "adapt", "--catalog", str(shop / "catalog.csv"), "--views", "3", "--epochs", "1", "--max-steps", "2"]
    res = CliRunner().invoke(app, [*args, "--from", str(base), "--out", str(out), "--work", str(tmp_path / "work")])
    assert res.exit_code == 0, res.output
    manifest = verify_bundle(out)
    assert {a.file for a in manifest.artifacts} == {"embedder_w8.tflite", "embedder_int8.mlpackage"}
    assert all(a.publishable for a in manifest.artifacts)
    model_id = load_manifest(out).embedder.model_id
    assert model_id and model_id in res.output and "shoplens reindex" in res.output
    adapted, blob = load_checkpoint(out / BUNDLE_CHECKPOINT)
    base_model, _ = load_checkpoint(base)
    record = blob["config"]["meta"]["adapt"]
    assert record["catalog"]["products"] == len(PRODUCTS) and record["catalog"]["catalog_images"] == CATALOG_IMAGES
    assert not torch.equal(adapted.head.weight, base_model.head.weight)  # it trained
    # the bundle's own id differs from what the base converts to: a new model for the service
    assert model_id != f"{base_model.config.trunk}" and record["base_sha256"]

    # `shoplens index` takes the adapted bundle (straight into a Milvus Lite file)
    env = {**os.environ, "SHOPLENS_MILVUS_URI": str(tmp_path / "index.db"), "SHOPLENS_COLLECTION": "shop", "COLUMNS": "250"}
    idx = subprocess.run([sys.executable, "-m", "shoplens", "index", "--catalog", str(shop / "catalog.csv"), "--embedder", str(out), "--no-detector",
                          "--state", str(tmp_path / "s.db"), "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert idx.returncode == 0, idx.stdout + idx.stderr
    assert f"{CATALOG_IMAGES} imported" in idx.stdout and f"model {model_id}" in idx.stdout

    # the adapted bundle carries its checkpoint, so it is adapted again when the catalog grows (`--from` the bundle folder)
    from shoplens.converters.embedder.adapt_cli import _source_checkpoint

    assert _source_checkpoint(out) == out / BUNDLE_CHECKPOINT
    again = adapt(AdaptConfig(source=_source_checkpoint(out), catalog=shop / "catalog.csv", work=tmp_path / "work2", views=2, epochs=1, max_steps=1))
    assert load_checkpoint(again.checkpoint)[1]["config"]["meta"]["adapt"]["base_sha256"] != record["base_sha256"]


def test_adapt_resumes_a_finished_epoch_instead_of_redoing_it(shop: Path, base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = AdaptConfig(source=base, catalog=shop / "catalog.csv", work=tmp_path / "w", views=2, epochs=1)
    first = adapt(cfg)
    state = torch.load(tmp_path / "w" / "adapt.state.pt", weights_only=False)
    assert state["epoch"] == 1 and len(first.losses) == 1
    caplog.set_level("INFO", logger="shoplens.embedder.adapt")
    second = adapt(cfg)
    assert "resumed from" in caplog.text and second.losses == first.losses  # nothing retrained
    # another configuration does not resume from that state
    caplog.clear()
    adapt(AdaptConfig(**{**cfg.__dict__, "distill_weight": 0.0}))
    assert "written by another configuration" in caplog.text


def test_bad_input_exits_2_naming_it_and_writes_nothing(shop: Path, base: Path, grocery_dir: Path, tmp_path: Path) -> None:
    from shoplens.cli import app

    out = tmp_path / "out"
    # a bundle without a trainable checkpoint (the converted artifacts alone cannot be fine-tuned)
    empty_bundle = tmp_path / "bundle"
    empty_bundle.mkdir()
    wide = {"COLUMNS": "1000"}  # typer's error box wraps at the terminal width, wherever the tmp path's length puts the break
    res = CliRunner().invoke(app, ["embedder", "adapt", "--from", str(empty_bundle), "--catalog", str(shop / "catalog.csv"), "--out", str(out)], env=wide)
    said = " ".join(res.output.replace("│", " ").split())
    assert res.exit_code == 2 and "carries no trainable checkpoint" in said, res.output
    # a catalog row whose image is missing: named, before any work
    rows = catalog_rows(grocery_dir)
    bad = write_csv(shop / "bad-adapt.csv", rows + [{**rows[0], "image": "images/no-such.jpg", "role": "catalog"}])
    res = CliRunner().invoke(app, ["embedder", "adapt", "--from", str(base), "--catalog", str(bad), "--out", str(out), "--work", str(tmp_path / "w")], env=wide)
    assert res.exit_code == 2, res.output
    said = " ".join(res.output.replace("│", " ").split())
    assert f"line {len(rows) + 2}" in said and "no-such.jpg" in said
    assert not out.exists() and not (tmp_path / "w").exists()
    with pytest.raises(CatalogDataError):
        adapt(AdaptConfig(source=base, catalog=bad, work=tmp_path / "w2"))
    assert not (tmp_path / "w2").exists()
