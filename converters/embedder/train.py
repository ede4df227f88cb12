"""Fine-tune the embedder on a catalog's product ids, fast on CPU: the training loop.

Shop data is small (tens of photos per product, one or a few catalog images), so only the
last stage-3 units, the closing BN and the head learn; BN statistics stay frozen
(small batches would make them noisy and the export would differ), and the
frozen layers' outputs come from a disk cache (``feature_cache``). Catalog
images (Grocery's iconic images) are training samples of their product, augmented
to look like phone crops, so photos and catalog images meet in one space. The
catalog is a shop's own (``shoplens index``'s formats) or the Grocery layout
(``data.load_catalog``), and every image a run reads is decoded before any work
starts (``catalog_check``), so a bad row stops it with nothing written. The objective is in
``losses``, the options in ``train_config``; docs/embedder.md has the measurements
that chose them.

State (model, proxies, projector, optimiser, schedule, epoch, best epoch so far)
is written after every epoch and a rerun of the same configuration resumes;
everything is seeded.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from shoplens.converters.embedder.catalog_check import CheckedData, check_run_data
from shoplens.converters.embedder.data import Catalog, Sample, holdout_products, load_catalog
from shoplens.converters.embedder.evaluate import RetrievalSets, evaluate_vectors
from shoplens.converters.embedder.feature_cache import Rows, View, cache_key, embed_cached, embed_tail, frozen_features
from shoplens.converters.embedder.head import pca_projection
from shoplens.converters.embedder.losses import class_balanced_order, cosface_loss, make_projector, project, random_feature_crop, supcon_loss
from shoplens.converters.embedder.model import Embedder, EmbedderConfig, build_embedder, save_checkpoint
from shoplens.converters.embedder.train_config import (
    NOVEL_METRIC,
    SELECT_METRIC,
    SELECTIONS,
    TrainConfig,
    TrainConfigError,
    TrainResult,
    training_key,
    validate,
)
from shoplens.settings import get_settings

__all__ = ["NOVEL_METRIC", "SELECT_METRIC", "SELECTIONS", "TrainConfig", "TrainConfigError", "TrainResult", "check_data", "selection_products", "train",
           "training_key", "training_photos"]

log = logging.getLogger("shoplens.embedder.train")


def selection_products(catalog: Catalog, held: set[int], n: int, seed: int) -> set[int]:
    """A seeded set of ``n`` training products kept out of the selection run (never the held-out ones)."""
    ids = sorted(p for p in catalog.names if p not in held)
    if not 0 < n < len(ids):
        raise TrainConfigError(f"select_products must be in [1, {len(ids) - 1}] (training products: {len(ids)}), not {n}")
    return set(random.Random(f"select:{seed}").sample(ids, n))


def training_photos(cfg: TrainConfig, catalog: Catalog) -> list[Sample]:
    """The labelled photos a run trains on: the ``labels`` split, subsampled (seeded) to ``max_photos``."""
    photos = catalog.split(cfg.labels)
    if cfg.max_photos:
        photos = random.Random(cfg.seed).sample(photos, min(cfg.max_photos, len(photos)))
    return photos


def check_data(cfg: TrainConfig, catalog: Catalog, photos: list[Sample]) -> CheckedData:
    """Every image the run will read decodes, and the evaluation has val photos; raised before any work starts."""
    if not cfg.evaluate:
        return check_run_data(catalog, photos, decode_side=cfg.input_size)
    if not catalog.has_split("val"):
        raise TrainConfigError(
            f"{catalog.source or catalog.root} has no val photos (rows with role val; val.txt in the Grocery layout): the per-epoch "
            "evaluation and --select best/novel need them. Pass --no-eval (the last epoch is kept), or mark a few labelled "
            "photos of each product role=val"
        )
    sets = RetrievalSets.from_catalog(catalog)
    return check_run_data(catalog, photos, sets.val, sets.train, decode_side=cfg.input_size)


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: TrainConfig) -> TrainResult:
    """Fine-tune and write ``cfg.out`` (the fp32 checkpoint); resumes from ``<out>.state.pt``.

    ``select="novel"`` runs twice (see TrainConfig.select): the selection run resumes
    from ``<out>.select.state.pt`` and writes no checkpoint of its own.
    """
    t0 = time.time()
    validate(cfg)
    catalog: Catalog = load_catalog(cfg.catalog)
    held = holdout_products(catalog, cfg.holdout, cfg.holdout_seed)
    novel = selection_products(catalog, held, cfg.select_products, cfg.seed) if cfg.select == "novel" else set()  # before the slower image check
    photos = training_photos(cfg, catalog)
    data = check_data(cfg, catalog, photos)
    log.info("catalog %s: %s", data.path, json.dumps(data.to_json()))
    state_path = Path(str(cfg.out) + ".state.pt")
    inputs = _Inputs(catalog, photos, data)
    if cfg.select != "novel":
        result = _train_run(cfg, inputs, held, state_path=state_path, meta={"catalog": data.to_json()})
    else:
        log.info("selection run: %d training products kept out to pick the epoch: %s", len(novel), sorted(novel))
        probe = _train_run(cfg, inputs, held, novel=novel, state_path=Path(str(cfg.out) + ".select.state.pt"), save=False)
        scores = [row[NOVEL_METRIC] for row in probe.history]
        epoch = 1 + int(np.argmax(scores))  # the first of equal scores: the shorter run
        log.info("selection run: %s by epoch %s -> training on every product for %d epoch(s)", NOVEL_METRIC, [round(x, 3) for x in scores], epoch)
        selection = {
            "selection": f"epoch with the best {NOVEL_METRIC} of {len(novel)} products kept out of a selection run",
            "selection_products": sorted(novel),
            "selection_history": probe.history,
        }
        result = _train_run(cfg, inputs, held, stop_after=epoch, state_path=state_path, meta={"catalog": data.to_json(), **selection})
        result.selection_history = probe.history
    result.seconds = time.time() - t0
    return result


@dataclass
class _Inputs:
    """What a run reads, checked (``check_data``): the catalog, the training photos and their record."""

    catalog: Catalog
    photos: list[Sample]
    checked: CheckedData


@dataclass
class _Data:
    """The cached features of one run's training views, their labels and the evaluation features."""

    feats: Any  # memmap, or Rows of it
    labels: torch.Tensor
    views: list[View]
    sets: RetrievalSets
    eval_feats: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Run:
    """What one run trains and the optimiser state around it."""

    model: Embedder
    tail: nn.Module
    projector: nn.Module | None
    proxies: nn.Parameter
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    total_steps: int


def _load_data(cfg: TrainConfig, inputs: _Inputs, cls_of: dict[int, int], model: Embedder, frozen: nn.Module) -> _Data:
    """Views of every product are cached (a held-out run reuses the full run's cache), then filtered."""
    catalog = inputs.catalog
    all_views = [View(s, v) for s in inputs.photos for v in range(cfg.photo_views)]
    all_views += [View(s, v) for s in catalog.iconic_samples() for v in range(catalog.views_per_image(s.product, cfg.iconic_views))]
    keep = np.array([i for i, v in enumerate(all_views) if v.sample.product in cls_of])
    train_views = [all_views[i] for i in keep]
    cache_root = (cfg.cache_dir or get_settings().cache_dir) / "embedder_features"

    def cached(label: str, views: list[View]) -> np.ndarray:
        return frozen_features(frozen, model, views, cfg.input_size, cfg.seed, cache_root / f"{cache_key(cfg, label, views)}.f16", label)

    feats_all = cached("train", all_views)
    feats = feats_all if len(keep) == len(all_views) else Rows(feats_all, keep)
    labels = torch.tensor([cls_of[v.sample.product] for v in train_views])
    sets = RetrievalSets.from_catalog(catalog)
    data = _Data(feats, labels, train_views, sets)
    if cfg.evaluate:
        data.eval_feats = {k: cached(k, [View(s, 0) for s in getattr(sets, k)]) for k in ("val", "iconic", "train")}
    return data


@torch.no_grad()
def _init_head_and_proxies(cfg: TrainConfig, model: Embedder, tail: nn.Module, data: _Data, classes: int) -> tuple[nn.Module | None, torch.Tensor]:
    """Head: PCA of the pooled clean training views. Proxies: class means in the space the loss sees."""
    clean_idx = np.array([i for i, v in enumerate(data.views) if v.index == 0])
    tail.eval()
    pooled = np.concatenate(
        [model.pool_map(tail(torch.from_numpy(np.asarray(data.feats[clean_idx[i : i + 128]], dtype=np.float32)))).numpy() for i in range(0, len(clean_idx), 128)]
    )
    w, b = pca_projection(pooled, cfg.dim) if len(pooled) > cfg.dim else (None, None)
    if w is not None:
        model.head.weight.copy_(torch.from_numpy(w))
        model.head.bias.copy_(torch.from_numpy(b))
    emb = model.embed_features(torch.from_numpy(pooled))
    projector = make_projector(cfg.dim, cfg.projector) if cfg.projector else None
    emb = project(projector, emb)
    proxies = torch.zeros(classes, cfg.dim)
    proxies.index_add_(0, data.labels[clean_idx], emb)
    return projector, F.normalize(proxies + 1e-6 * torch.randn_like(proxies), dim=1)  # the noise breaks ties


def _build_run(cfg: TrainConfig, model: Embedder, tail: nn.Module, data: _Data, classes: int) -> _Run:
    projector, proxies0 = _init_head_and_proxies(cfg, model, tail, data, classes)
    proxies = nn.Parameter(proxies0)
    params_tail = [p for p in tail.parameters() if p.requires_grad]
    head = list(model.head.parameters()) + [proxies] + (list(model.pool.parameters()) if model.pool else []) + (list(projector.parameters()) if projector else [])
    opt = torch.optim.AdamW([{"params": params_tail, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}], weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data.views) / cfg.batch_size)
    if cfg.pair_weight > 0:  # the number of class-balanced batches depends on the labels only, not on the shuffle
        steps_per_epoch = len(class_balanced_order(data.labels, cfg.classes_per_batch, cfg.batch_size, torch.Generator().manual_seed(0)))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = min(50, max(1, total_steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total_steps))))
    )
    return _Run(model, tail, projector, proxies, opt, sched, steps_per_epoch, total_steps)


def _resume(run: _Run, state_path: Path, run_key: dict[str, Any], data_sha256: str, result: TrainResult) -> tuple[int, int, dict[str, Any]]:
    """``(epoch, step, best)`` from the state file of the same run on the same data, or a fresh start.

    State files written before the data hash was recorded carry none and resume on their key alone.
    """
    if not state_path.is_file():
        return 0, 0, {}
    st = torch.load(state_path, map_location="cpu", weights_only=False)
    if st.get("config") != run_key:
        log.warning("ignoring %s: written by a different configuration", state_path)
        return 0, 0, {}
    if st.get("data_sha256", data_sha256) != data_sha256:
        log.warning("ignoring %s: written from other catalog data (its images or labels changed)", state_path)
        return 0, 0, {}
    run.model.load_state_dict(st["model"])
    with torch.no_grad():
        run.proxies.copy_(st["proxies"])
    if run.projector is not None:
        run.projector.load_state_dict(st["projector"])
    run.opt.load_state_dict(st["opt"])
    run.sched.load_state_dict(st["sched"])
    result.losses, result.history, result.step_losses = st["losses"], st["history"], st.get("step_losses", [])
    torch.set_rng_state(st["torch_rng"])
    log.info("resumed from %s at epoch %d", state_path, st["epoch"])
    return st["epoch"], st["step"], st.get("best") or {}


def _train_epoch(cfg: TrainConfig, run: _Run, data: _Data, epoch: int, step: int, gen: torch.Generator, result: TrainResult) -> int:
    """One epoch's steps (fewer if ``max_steps`` ends it); returns the step count after it."""
    gen.manual_seed(cfg.seed * 1000 + epoch)
    # drawn in both paths: the class-balanced batches then come from the same seeded stream as in the shipped run
    order = torch.randperm(len(data.views), generator=gen)
    batches = class_balanced_order(data.labels, cfg.classes_per_batch, cfg.batch_size, gen) if cfg.pair_weight > 0 else None
    run.tail.train()
    for m in run.tail.modules():  # frozen BN statistics (see the module docstring)
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    epoch_losses: list[float] = []
    bar = tqdm(range(run.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step")
    for i in bar:
        if step >= run.total_steps:
            break
        idx = batches[i] if batches is not None else order[i * cfg.batch_size : (i + 1) * cfg.batch_size].sort().values.numpy()
        x = random_feature_crop(torch.from_numpy(np.asarray(data.feats[idx], dtype=np.float32)), cfg.feature_crop, gen)
        z = project(run.projector, embed_tail(run.model, run.tail, x))
        loss = cosface_loss(z, run.proxies, data.labels[idx], cfg.margin, cfg.scale)
        if cfg.pair_weight > 0:
            loss = loss + cfg.pair_weight * supcon_loss(z, data.labels[idx], cfg.pair_temperature)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        run.sched.step()
        step += 1
        epoch_losses.append(loss.item())
        result.step_losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(epoch_losses[-20:]):.3f}")
    result.losses.append(float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
    return step


def _save_state(path: Path, run: _Run, run_key: dict[str, Any], data_sha256: str, epoch: int, step: int, result: TrainResult,
                best: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"config": run_key, "data_sha256": data_sha256, "model": run.model.state_dict(), "proxies": run.proxies.detach(),
         "projector": run.projector.state_dict() if run.projector is not None else None, "opt": run.opt.state_dict(), "sched": run.sched.state_dict(),
         "epoch": epoch, "step": step, "losses": result.losses, "history": result.history, "step_losses": result.step_losses,
         "torch_rng": torch.get_rng_state(), "best": best},
        path,
    )


def _train_run(
    cfg: TrainConfig,
    inputs: _Inputs,
    held: set[int],
    *,
    state_path: Path,
    novel: frozenset[int] | set[int] = frozenset(),
    stop_after: int | None = None,
    save: bool = True,
    meta: dict[str, Any] | None = None,
) -> TrainResult:
    """One training run without the ``held`` and ``novel`` products, evaluating ``novel`` each epoch; optionally stopped early."""
    torch.set_num_threads(cfg.threads)
    _set_seed(cfg.seed)
    products = sorted(p for p in inputs.catalog.names if p not in held and p not in novel)
    cls_of = {p: i for i, p in enumerate(products)}
    mcfg = EmbedderConfig(trunk=cfg.trunk, weights=cfg.weights or "", dim=cfg.dim, pool=cfg.pool, input_size=cfg.input_size)
    model = build_embedder(mcfg, random_init=cfg.random_init)
    frozen, tail = model.trunk.split(cfg.trainable_units)
    data = _load_data(cfg, inputs, cls_of, model, frozen)
    run = _build_run(cfg, model, tail, data, len(products))

    run_key = {**cfg.training_key(), "run": {"kept_out": sorted(novel), "stop_after": stop_after}}
    result = TrainResult(checkpoint=Path(cfg.out), held_out=sorted(held))
    data_sha256 = inputs.checked.sha256
    start_epoch, step, best = _resume(run, state_path, run_key, data_sha256, result)

    def run_eval() -> dict[str, float]:
        vec = {k: embed_cached(model, tail, f) for k, f in data.eval_feats.items()}
        return evaluate_vectors(data.sets, vec, unseen=held or None, novel=set(novel) or None)

    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(start_epoch, stop_after or cfg.epochs):
        if step >= run.total_steps:
            break
        step = _train_epoch(cfg, run, data, epoch, step, gen, result)
        row = {"epoch": float(epoch + 1), "loss": result.losses[-1]}
        if cfg.evaluate:
            row.update(run_eval())
        result.history.append(row)
        log.info("epoch %d: %s", epoch + 1, json.dumps(row))
        score = row.get(SELECT_METRIC, float("nan"))
        if cfg.select == "best" and (not best or score > best["score"]):
            best = {"epoch": epoch + 1, "score": score, "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        _save_state(state_path, run, run_key, data_sha256, epoch + 1, step, result, best)
    return _finish(cfg, model, result, best, held, run_eval, save, meta)


def _finish(cfg: TrainConfig, model: Embedder, result: TrainResult, best: dict[str, Any], held: set[int], run_eval: Any,
            save: bool, meta: dict[str, Any] | None) -> TrainResult:
    """Restore the selected epoch's weights, fill in its figures and write the checkpoint."""
    selected = len(result.history)
    if best:  # ship the best val epoch (chosen on val, the set the figures are reported on)
        model.load_state_dict(best["model"])
        selected = best["epoch"]
    if cfg.evaluate:  # the selected epoch's evaluation is the final one; evaluate only if no epoch ran it
        row = result.history[selected - 1] if result.history else {}
        result.metrics = {k: v for k, v in row.items() if k not in ("epoch", "loss")} if "queries" in row else run_eval()
    result.selected_epoch = selected
    if not save:
        return result
    model.config.meta.update({
        "train": cfg.to_json(),
        "held_out_products": sorted(held),
        "metrics": result.metrics,
        "history": result.history,
        "selected_epoch": selected,
        "selection": f"best val {SELECT_METRIC}" if best else "last epoch",
        **(meta or {}),
    })
    save_checkpoint(model, cfg.out)
    return result
