"""Head fitting, retrieval metrics and a short real fine-tuning run on Grocery Store images."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shoplens.converters.embedder.data import load_catalog
from shoplens.converters.embedder.evaluate import recall_at, topk_overlap
from shoplens.converters.embedder.head import fit_head, pca_projection
from shoplens.converters.embedder.model import EmbedderConfig, build_embedder, load_checkpoint
from shoplens.converters.embedder.train import TrainConfig, train


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
        epochs=2, batch_size=32, max_steps=24, lr=5e-4, head_lr=5e-3, evaluate=False, select="last", cache_dir=tmp_path / "cache", holdout=20,
        pool="gem", pair_weight=0.0, projector=0,  # the plain CosFace path with random batches, no projector (the defaults use both)
    )
    result = train(cfg)
    first, last = np.mean(result.step_losses[:4]), np.mean(result.step_losses[-4:])
    assert len(result.step_losses) == 24
    assert last < first - 0.1, f"loss did not go down: {first:.3f} -> {last:.3f}"
    model, blob = load_checkpoint(cfg.out)
    assert model.config.dim == 32 and len(model.config.meta["held_out_products"]) == 20
    assert model.config.pool == "gem" and model.pool is not None and float(model.pool.p) != 3.0  # GeM's p is learnt
    # a rerun of the same command resumes from the state file: nothing left to train
    again = train(cfg)
    assert again.step_losses == result.step_losses


def test_projector_run_trains_through_it_exports_without_it_and_resumes(grocery_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """projector=H: the loss acts on a training-only MLP over the embedding; the checkpoint is the plain embedder."""
    cfg = TrainConfig(
        catalog=grocery_dir, out=tmp_path / "ck.pt", input_size=64, dim=32, max_photos=160, photo_views=2, iconic_views=2,
        epochs=2, batch_size=32, classes_per_batch=8, evaluate=False, select="last", cache_dir=tmp_path / "cache", projector=64,
    )
    result = train(cfg)
    assert all(np.isfinite(result.step_losses)) and result.losses[-1] < result.losses[0], result.losses
    state = torch.load(str(cfg.out) + ".state.pt", map_location="cpu", weights_only=False)
    proj = state["projector"]
    assert proj["0.weight"].shape == (64, 32) and proj["3.weight"].shape == (32, 64)
    assert state["proxies"].shape[1] == 32  # proxies live in the projector's output space
    model, _ = load_checkpoint(cfg.out)
    plain = build_embedder(EmbedderConfig(input_size=64, dim=32), random_init=True)
    assert set(model.state_dict()) == set(plain.state_dict())  # nothing of the projector is exported
    assert model.config.meta["train"]["projector"] == 64
    # the projector learnt: a fresh one (same seed) differs from the trained one
    from shoplens.converters.embedder.losses import make_projector

    torch.manual_seed(0)
    assert not torch.allclose(make_projector(32, 64).state_dict()["0.weight"], proj["0.weight"])
    # a run stopped after epoch 1 resumes with the projector's state: epoch 2 repeats the uninterrupted run
    import shoplens.converters.embedder.train as te

    # (both after the first run built the feature cache: a cache hit draws fewer random numbers)
    reference = train(dataclasses.replace(cfg, out=tmp_path / "reference.pt"))
    stopped = dataclasses.replace(cfg, out=tmp_path / "stopped.pt")
    real_save, saves = te.torch.save, []

    def save_then_stop(obj: object, path: object) -> None:
        saves.append(path)
        if len(saves) == 2:  # the state file after epoch 2: the run is killed before writing it
            raise KeyboardInterrupt
        real_save(obj, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(te.torch, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train(stopped)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shoplens.embedder.train"):
        resumed = train(dataclasses.replace(stopped, threads=1))  # another thread count is the same run: it resumes
    assert "resumed from" in caplog.text and "ignoring" not in caplog.text, caplog.text
    np.testing.assert_allclose(resumed.step_losses, reference.step_losses, rtol=1e-5)
    with pytest.raises(ValueError, match="projector"):
        train(TrainConfig(catalog=grocery_dir, out=tmp_path / "x.pt", projector=-1))


def test_projector_takes_a_single_view_batch() -> None:
    """A short last batch of one view goes through the projector's running statistics instead of failing BatchNorm."""
    from shoplens.converters.embedder.losses import make_projector, project

    torch.manual_seed(0)
    proj = make_projector(8, 16).train()
    one = F.normalize(torch.randn(1, 8), dim=1).requires_grad_()
    z = project(proj, one)
    assert z.shape == (1, 8) and float(z.norm()) == pytest.approx(1.0) and proj.training
    z.sum().backward()
    assert one.grad is not None and float(one.grad.abs().sum()) > 0
    assert project(None, one) is one
    with pytest.raises(ValueError):  # what BatchNorm itself does with one sample in training mode
        proj(one)


def test_supcon_loss_is_low_when_products_cluster_and_high_when_they_mix() -> None:
    from shoplens.converters.embedder.losses import supcon_loss

    e = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.05, 1.0]]), dim=1)
    grouped = supcon_loss(e, torch.tensor([0, 0, 1, 1]), 0.1)
    mixed = supcon_loss(e, torch.tensor([0, 1, 0, 1]), 0.1)
    assert grouped < 0.01 and mixed > 9.0
    # views with no positive in the batch do not count: only the close pair (0, 1) scores here;
    # a batch of singletons gives 0, not NaN
    partial = supcon_loss(e, torch.tensor([0, 0, 1, 2]), 0.1)
    assert torch.isfinite(partial) and partial < 0.01
    assert supcon_loss(e, torch.tensor([0, 1, 2, 3]), 0.1).item() == 0.0


def test_class_balanced_order_covers_every_view_once_with_k_views_per_product() -> None:
    from shoplens.converters.embedder.losses import class_balanced_order

    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 30 + [3] * 3)
    batches = class_balanced_order(labels, 4, 16, torch.Generator().manual_seed(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(labels)))
    assert all(len(b) <= 16 for b in batches)
    # views come in chunks of K=4 per product: every view of a product with >= 4 views has a positive in its batch
    for b in batches:
        counts = torch.bincount(labels[b], minlength=4)
        assert all(counts[c] >= 2 for c in torch.unique(labels[b]).tolist()), counts
    again = class_balanced_order(labels, 4, 16, torch.Generator().manual_seed(0))
    assert all((a == b).all() for a, b in zip(batches, again))


def test_random_feature_crop_is_seeded_and_off_at_one() -> None:
    from shoplens.converters.embedder.losses import random_feature_crop

    x = torch.arange(4 * 2 * 14 * 14, dtype=torch.float32).reshape(4, 2, 14, 14)
    assert random_feature_crop(x, 1.0, torch.Generator().manual_seed(0)) is x
    a = random_feature_crop(x, 0.5, torch.Generator().manual_seed(3))
    b = random_feature_crop(x, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape[:2] == (4, 2)
    assert 7 <= a.shape[2] <= 14 and 7 <= a.shape[3] <= 14
    sizes = {random_feature_crop(x, 0.5, torch.Generator().manual_seed(s)).shape[2:] for s in range(20)}
    assert len(sizes) > 3  # crop sizes vary from batch to batch
    # every crop is a contiguous window of its own sample
    for xi, ai in zip(x, a):
        h, w = ai.shape[1:]
        found = any(torch.equal(xi[:, y : y + h, z : z + w], ai) for y in range(15 - h) for z in range(15 - w))
        assert found


def _small_catalog(grocery_dir: Path, root: Path) -> Path:
    """The real catalog's images (linked, not copied) with a tenth of the val and a twentieth of the train photos."""
    root.mkdir()
    for name in ("iconic-images-and-descriptions", "train", "val"):
        (root / name).symlink_to(grocery_dir / name)
    (root / "classes.csv").write_text((grocery_dir / "classes.csv").read_text())
    for split, step in (("train", 20), ("val", 10)):
        lines = (grocery_dir / f"{split}.txt").read_text().splitlines()
        (root / f"{split}.txt").write_text("\n".join(lines[::step]) + "\n")
    return root


def test_select_best_keeps_the_best_val_epoch(grocery_dir: Path, tmp_path: Path) -> None:
    cat = _small_catalog(grocery_dir, tmp_path / "cat")
    cfg = TrainConfig(
        catalog=cat, out=tmp_path / "best.pt", input_size=64, dim=32, photo_views=2, iconic_views=2, epochs=3, batch_size=32,
        lr=5e-4, head_lr=5e-3, cache_dir=tmp_path / "cache", feature_crop=0.6, select="best",
    )
    result = train(cfg)
    scores = [row["photo_iconic_r@1"] for row in result.history]
    assert len(scores) == 3
    assert result.selected_epoch == 1 + int(np.argmax(scores))  # first of equal best
    assert result.metrics["photo_iconic_r@1"] == max(scores)
    _, blob = load_checkpoint(cfg.out)
    meta = blob["config"]["meta"]
    assert meta["selected_epoch"] == result.selected_epoch and meta["selection"].startswith("best val")
    # the saved weights are the selected epoch's: evaluating them again gives its figures
    from shoplens.converters.embedder.evaluate import RetrievalSets, embed_paths, evaluate_vectors

    model, _ = load_checkpoint(cfg.out)
    model.eval()
    catalog = load_catalog(cat)
    sets = RetrievalSets.from_catalog(catalog)

    def embed(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    vec = {k: embed_paths(embed, getattr(sets, k), 64) for k in ("val", "iconic", "train")}
    again = evaluate_vectors(sets, vec)
    # the training evaluation ran on fp16-cached features; allow one query to flip
    assert abs(again["photo_iconic_r@1"] - result.metrics["photo_iconic_r@1"]) <= 1 / again["queries"] + 1e-9
    with pytest.raises(ValueError, match="needs the per-epoch evaluation"):
        train(TrainConfig(catalog=cat, out=tmp_path / "x.pt", evaluate=False, select="best"))
    with pytest.raises(ValueError, match="feature_crop"):
        train(TrainConfig(catalog=cat, out=tmp_path / "x.pt", feature_crop=0.0))
    with pytest.raises(ValueError, match="classes_per_batch"):
        train(TrainConfig(catalog=cat, out=tmp_path / "x.pt", pair_weight=1.0, classes_per_batch=0))
    with pytest.raises(ValueError, match="pool must be one of"):
        train(TrainConfig(catalog=cat, out=tmp_path / "x.pt", pool="max"))


def test_train_cli_rejects_an_unknown_select_or_pool(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shoplens.cli import app

    res = CliRunner().invoke(app, ["embedder", "train", "--select", "worst", "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "use 'best' or 'last' or 'novel'" in res.output
    assert not (tmp_path / "x.pt").exists()
    res = CliRunner().invoke(app, ["embedder", "train", "--select", "novel", "--no-eval", "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "needs the per-epoch evaluation" in res.output
    res = CliRunner().invoke(app, ["embedder", "train", "--select", "novel", "--select-products", "81", "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "select_products must be in [1, 80]" in res.output, res.output
    res = CliRunner().invoke(app, ["embedder", "train", "--pair-weight", "1", "--classes-per-batch", "65", "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "classes_per_batch <= batch_size" in res.output, res.output
    res = CliRunner().invoke(app, ["embedder", "train", "--pool", "max", "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "use 'avg' or 'gem'" in res.output
    assert not (tmp_path / "x.pt").exists()


def test_new_product_rows_query_train_split_photos_of_the_products_named() -> None:
    """``unseen`` adds the held-out products' train-split photos as queries; ``novel`` uses only those of its products."""
    from shoplens.converters.embedder.data import Sample
    from shoplens.converters.embedder.evaluate import RetrievalSets, evaluate_vectors

    def samples(labels: list[int]) -> list[Sample]:
        return [Sample(path=Path(f"{i}.jpg"), product=p, kind="photo") for i, p in enumerate(labels)]

    iconic = np.eye(4, dtype=np.float32)  # products 0..3, one iconic image each
    train_labels = [0, 1, 2, 2, 3, 3]
    # product 2's photos find product 2; product 3's first photo lands on product 0's iconic image
    train_vec = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0.9, 0, 0, 0.1], [0, 0, 0, 1]], dtype=np.float32)
    val_vec = np.eye(4, dtype=np.float32)
    sets = RetrievalSets(val=samples([0, 1, 2, 3]), iconic=samples([0, 1, 2, 3]), train=samples(train_labels))
    vec = {"val": val_vec, "iconic": iconic, "train": train_vec}
    out = evaluate_vectors(sets, vec, unseen={3}, novel={2})
    assert out["unseen_train_queries"] == 2 and out["unseen_train_photo_iconic_r@1"] == 0.5
    assert out["novel_queries"] == 2 and out["novel_photo_iconic_r@1"] == 1.0
    assert out["unseen_queries"] == 1 and out["queries"] == 3
    assert "novel_queries" not in evaluate_vectors(sets, vec) and "unseen_train_queries" not in evaluate_vectors(sets, vec)


def test_selection_products_are_seeded_training_products_only(grocery_dir: Path) -> None:
    from shoplens.converters.embedder.data import holdout_products
    from shoplens.converters.embedder.train import selection_products

    catalog = load_catalog(grocery_dir)
    held = holdout_products(catalog, 27, 0)
    picked = selection_products(catalog, held, 10, 0)
    assert len(picked) == 10 and not picked & held and picked == selection_products(catalog, held, 10, 0)
    assert picked != selection_products(catalog, held, 10, 1)
    for bad in (0, len(catalog.names) - len(held)):
        with pytest.raises(ValueError, match="select_products"):
            selection_products(catalog, held, bad, 0)


def test_select_novel_picks_the_epoch_on_products_kept_out_then_trains_on_all_of_them(grocery_dir: Path, tmp_path: Path) -> None:
    """The selection run never trains the kept-out products and scores them each epoch; the real run trains on
    every product and stops at the picked epoch; a rerun resumes both runs instead of training again."""
    cat = _small_catalog(grocery_dir, tmp_path / "cat")
    cfg = TrainConfig(
        catalog=cat, out=tmp_path / "novel.pt", input_size=64, dim=32, photo_views=2, iconic_views=2, epochs=3, batch_size=32,
        lr=5e-4, head_lr=5e-3, cache_dir=tmp_path / "cache", select="novel", select_products=12, holdout=10,
    )
    result = train(cfg)
    probe = result.selection_history
    scores = [row["novel_photo_iconic_r@1"] for row in probe]
    assert len(probe) == 3 and all(row["novel_queries"] > 0 for row in probe)
    assert result.selected_epoch == 1 + int(np.argmax(scores)) == len(result.history)
    assert all("novel_queries" not in row for row in result.history)  # the real run keeps nobody out but the held-out products
    assert "unseen_train_photo_iconic_r@1" in result.metrics and "unseen_photo_iconic_r@1" in result.metrics
    _, blob = load_checkpoint(cfg.out)
    meta = blob["config"]["meta"]
    assert len(meta["selection_products"]) == 12 and not set(meta["selection_products"]) & set(meta["held_out_products"])
    assert meta["selected_epoch"] == result.selected_epoch and meta["selection"].startswith("epoch with the best novel")
    assert meta["selection_history"] == probe
    again = train(cfg)
    assert again.step_losses == result.step_losses and again.selection_history == probe


def test_train_cli_exposes_every_train_config_field_with_its_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command is generated from TrainConfig: every field is an option with the field's default, and every option arrives."""
    import typer
    from typer.testing import CliRunner

    from shoplens.cli import app
    from shoplens.converters.embedder import train as train_embedder
    from shoplens.converters.embedder.train_config import field_defaults

    command = typer.main.get_command(app).commands["embedder"].commands["train"]  # type: ignore[attr-defined]
    options = {p.name: p for p in command.params if p.param_type_name == "option" and p.name != "help"}
    defaults = field_defaults()
    assert set(options) == set(defaults)
    for name, default in defaults.items():
        expected = None if default is dataclasses.MISSING else default
        assert options[name].default == expected, name

    seen: list[TrainConfig] = []
    monkeypatch.setattr(train_embedder, "train", lambda cfg: seen.append(cfg) or train_embedder.TrainResult(checkpoint=cfg.out))
    res = CliRunner().invoke(app, ["embedder", "train", "--out", str(tmp_path / "x.pt"), "--scale", "7", "--margin", "0.3",
                                   "--pool", "gem", "--pair-weight", "0.5", "--pair-temperature", "0.2", "--classes-per-batch", "8",
                                   "--projector", "0", "--select", "novel", "--select-products", "7", "--holdout", "5", "--holdout-seed", "3",
                                   "--max-photos", "9", "--cache-dir", str(tmp_path / "c"), "--random"])
    assert res.exit_code == 0, res.output
    c = seen[0]
    assert (c.scale, c.margin, c.pool, c.pair_weight, c.pair_temperature, c.classes_per_batch) == (7.0, 0.3, "gem", 0.5, 0.2, 8)
    assert c.projector == 0 and (c.holdout, c.holdout_seed) == (5, 3) and (c.select, c.select_products) == ("novel", 7)
    assert c.max_photos == 9 and c.cache_dir == tmp_path / "c" and c.random_init and c.out == tmp_path / "x.pt"
    res = CliRunner().invoke(app, ["embedder", "train", "--out", str(tmp_path / "x.pt"), "--no-eval"])
    assert res.exit_code == 0, res.output
    assert not seen[1].evaluate and seen[1].select == "last"  # without the evaluation there is no best epoch
    shipped = {k: v for k, v in dataclasses.asdict(seen[1]).items() if k not in ("catalog", "out", "evaluate", "select")}
    assert shipped == {k: v for k, v in defaults.items() if k in shipped}  # the defaults are the shipped recipe
