"""Head fitting, retrieval metrics and a short real fine-tuning run on Grocery Store images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shoplens.converters.embedder_data import load_catalog
from shoplens.converters.embedder_eval import recall_at, topk_overlap
from shoplens.converters.embedder_head import fit_head, pca_projection
from shoplens.converters.embedder_model import EmbedderConfig, build_embedder, load_checkpoint
from shoplens.converters.train_embedder import TrainConfig, train


def test_product_level_recall_counts_products_not_items() -> None:
    catalog = np.eye(4, dtype=np.float32)
    labels = np.array([7, 7, 8, 9])  # two items of product 7
    q = np.array([[0.9, 0.8, 0.0, 0.1], [0.0, 0.9, 0.0, 0.2], [0.5, 0.0, 0.0, 0.6]], dtype=np.float32)
    r = recall_at(q, [8, 7, 7], catalog, labels, ks=(1, 2))
    # q0: ranking 7, 7, 9, 8 -> products 7, 9, 8: product 8 at rank 3 -> miss at 1 and 2
    # q1: 7 first -> hit; q2: ranking 9, 7 -> hit at 2 only
    assert r == {"r@1": pytest.approx(1 / 3), "r@2": pytest.approx(2 / 3)}
    assert topk_overlap(q, q, catalog, k=2) == 1.0
    assert topk_overlap(q, -q, catalog, k=2) < 1.0


def test_pca_projection_is_orthonormal_and_whitening_unit_variance() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)) * np.linspace(5, 0.5, 12)
    w, b = pca_projection(x, 4)
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=1e-5)
    y = x @ w.T + b
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    assert np.all(np.diff(y.var(0)) < 0)  # ordered by variance
    ww, bw = pca_projection(x, 4, whiten=True)
    np.testing.assert_allclose((x @ ww.T + bw).var(0, ddof=1), 1, rtol=1e-3)
    with pytest.raises(ValueError, match="needs more than"):
        pca_projection(x[:4], 4)


def test_fit_head_on_real_images_gives_unit_vectors(grocery_dir: Path) -> None:
    torch.set_num_threads(2)
    cat = load_catalog(grocery_dir)
    paths = [s.path for s in cat.split("train")[::66]]  # 40 photos
    model = build_embedder(EmbedderConfig(input_size=64, dim=16))
    stats = fit_head(model, paths)
    assert stats["samples"] == 40 and 0.3 < stats["explained_variance"] <= 1.0
    w = model.head.weight.detach().numpy()
    np.testing.assert_allclose(w @ w.T, np.eye(16), atol=1e-4)
    x = torch.randint(0, 255, (3, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        y = model(x)
    np.testing.assert_allclose(y.norm(dim=1).numpy(), 1, atol=1e-5)


def test_short_training_run_lowers_the_loss_and_resumes(grocery_dir: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        catalog=grocery_dir, out=tmp_path / "ck.pt", input_size=64, dim=32, max_photos=160, photo_views=2, iconic_views=2,
        epochs=2, batch_size=32, max_steps=24, lr=5e-4, head_lr=5e-3, evaluate=False, cache_dir=tmp_path / "cache", holdout=20,
    )
    result = train(cfg)
    first, last = np.mean(result.step_losses[:4]), np.mean(result.step_losses[-4:])
    assert len(result.step_losses) == 24
    assert last < first - 0.1, f"loss did not go down: {first:.3f} -> {last:.3f}"
    model, blob = load_checkpoint(cfg.out)
    assert model.config.dim == 32 and len(model.config.meta["held_out_products"]) == 20
    # a rerun of the same command resumes from the state file: nothing left to train
    again = train(cfg)
    assert again.step_losses == result.step_losses
