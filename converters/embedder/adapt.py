"""Catalog-only adaptation: fine-tune a trained embedder to a shop's products from their catalog images alone.

A shop has catalog images (studio shots) of its products and no labelled shopper
photos. Trained on the studio images as they are, a product's proxy moves into
the studio domain and its shelf photos find it *less* often than before
(docs/embedder.md, "Catalog-only adaptation"). So:

- every training view is a synthesised shopper view of a catalog image (``synthesis``:
  cut out, placed on a shelf among neighbours, reframed, relit, occluded, blurred);
- only the last ``trainable_units`` of the trunk and the head learn, on cached frozen
  features, so 100 products adapt in minutes on a CPU;
- the loss is CosFace over the catalog's products plus a photo-photo term between the
  views of one product, and a distillation term that keeps each view's embedding near
  the base model's: the products the base model was trained on keep their quality
  (the benchmark measures that, ``benchmarks/embedder_transfer.py``).

The run is seeded, shows progress, and resumes from ``<work>/adapt.state.pt`` (the
views' frozen features are cached in ``<work>/features``);
``shoplens embedder adapt`` (``adapt_cli``) wraps it into a complete bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from shoplens.converters.embedder.catalog_check import check_run_data
from shoplens.contract.model_id import sha256_file
from shoplens.converters.embedder.data import Catalog, list_images, load_catalog, open_upright
from shoplens.converters.embedder.feature_cache import View, embed_cached, embed_tail, frozen_features
from shoplens.converters.embedder.losses import cosface_loss, random_feature_crop, supcon_loss
from shoplens.converters.embedder.model import Embedder, load_checkpoint, save_checkpoint
from shoplens.converters.embedder.synthesis import SceneSource, cut_out, synthesise_view

log = logging.getLogger("shoplens.embedder.adapt")

#: the trainable checkpoint a bundle carries so that it can be adapted again
BUNDLE_CHECKPOINT = "embedder.pt"


class AdaptError(ValueError):
    """An adaptation that cannot run (found before any work starts; the CLI exits 2 with it)."""


@dataclass
class AdaptConfig:
    """One adaptation run; the defaults are the measured recipe (docs/embedder.md, "Catalog-only adaptation")."""

    source: Path  # the base checkpoint (.pt)
    catalog: Path  # catalog.csv / .jsonl / folder (role=catalog rows are the products' images)
    work: Path  # where the adapted checkpoint, the state file and the log go
    backgrounds: Path | None = None  # optional folder of photos of the shop (no labels): scene backgrounds
    views: int = 24  # synthesised views per product (shared among its catalog images)
    epochs: int = 6
    batch_size: int = 64
    trainable_units: int = 1
    lr: float = 1e-4
    head_lr: float = 1e-3
    margin: float = 0.2
    scale: float = 10.0
    pair_weight: float = 1.0
    pair_temperature: float = 0.1
    distill_weight: float = 4.0
    feature_crop: float = 0.8
    seed: int = 0
    threads: int = 2
    max_steps: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def run_key(self, source_sha: str, catalog_sha: str) -> dict[str, Any]:
        """What decides the result: a state file is resumed only under an equal key."""
        key = {k: v for k, v in self.to_json().items() if k not in ("threads", "work", "source", "catalog")}
        return {**key, "source_sha256": source_sha, "catalog_sha256": catalog_sha}


@dataclass
class AdaptResult:
    checkpoint: Path
    products: int
    images: int
    views: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


class SceneRenderer:
    """The feature cache's renderer of synthesised views (picklable: the loader worker gets a copy).

    Cut-outs are made once per image; neighbours are other products' cut-outs, so a
    product is seen beside things it must be told apart from, as on a shelf."""

    def __init__(self, catalog: Catalog, backgrounds: list[Path], size: int) -> None:
        self.cut: dict[Path, Image.Image] = {}
        for s in catalog.iconic_samples():
            im = open_upright(s.path)
            im.thumbnail((size * 2, size * 2))
            self.cut[s.path] = cut_out(im)
        self.product_of = {s.path: s.product for s in catalog.iconic_samples()}
        self.backgrounds = []
        for p in backgrounds:
            im = open_upright(p)
            im.thumbnail((size * 3, size * 3))
            self.backgrounds.append(im)

    def __call__(self, view: View, image: Image.Image, size: int, rng: random.Random) -> np.ndarray:
        """``image`` is not needed: every view is of a catalog image, whose cut-out is made already."""
        cut = self.cut[view.sample.path]
        others = [c for p, c in self.cut.items() if self.product_of[p] != view.sample.product]
        pick = rng.sample(others, min(6, len(others))) if others else []
        if rng.random() < 0.4:  # a row or pile of the same product (shelf facings, a bin of fruit)
            pick = [cut] * 3
        return synthesise_view(cut, size, rng, SceneSource(self.backgrounds, pick))


def _background_files(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    if not folder.is_dir():
        raise AdaptError(f"--backgrounds {folder}: not a folder")
    files = list_images(folder)
    if not files:
        raise AdaptError(f"--backgrounds {folder}: no images in it")
    return files


@dataclass
class _Data:
    feats: np.ndarray
    labels: torch.Tensor
    teacher: torch.Tensor  # the base model's embedding of every view (distillation target)
    views: list[View]


def _prepare(cfg: AdaptConfig, model: Embedder, frozen: nn.Module, tail: nn.Module, catalog: Catalog, renderer: SceneRenderer,
             cache_root: Path, key: str) -> _Data:
    products = sorted(catalog.images)
    cls_of = {p: i for i, p in enumerate(products)}
    views = [View(s, v) for pid in products for s in catalog.images[pid] for v in range(1 + catalog.views_per_image(pid, cfg.views))]
    feats = frozen_features(frozen, model, views, model.config.input_size, cfg.seed, cache_root / f"adapt-{key}.f16", "views", render=renderer)
    labels = torch.tensor([cls_of[v.sample.product] for v in views])
    teacher = torch.from_numpy(embed_cached(model, tail, feats))
    return _Data(feats, labels, teacher, views)


def adapt(cfg: AdaptConfig) -> AdaptResult:
    """Adapt ``cfg.source`` to ``cfg.catalog``; writes ``<work>/embedder.pt`` and returns what ran."""
    t0 = time.time()
    if not cfg.source.is_file():
        raise AdaptError(f"{cfg.source}: no such checkpoint")
    catalog = load_catalog(cfg.catalog)
    backgrounds = _background_files(cfg.backgrounds)
    model, blob = load_checkpoint(cfg.source)
    # every image decodes, or every bad row is named, before any work (the trainer's own check)
    checked = check_run_data(catalog, photos=[], decode_side=model.config.input_size)
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    source_sha = sha256_file(cfg.source)
    run_key = cfg.run_key(source_sha, checked.sha256)
    key = hashlib.sha256(json.dumps({k: run_key[k] for k in ("views", "seed", "trainable_units", "source_sha256", "catalog_sha256")}
                                    | {"backgrounds": [str(p) for p in backgrounds]}, sort_keys=True).encode()).hexdigest()[:16]
    frozen, tail = model.trunk.split(cfg.trainable_units)
    renderer = SceneRenderer(catalog, backgrounds, model.config.input_size)
    cache_root = cfg.work / "features"  # the views of this catalog: no other run shares them
    data = _prepare(cfg, model, frozen, tail, catalog, renderer, cache_root, key)

    with torch.no_grad():  # proxies start at each product's mean clean-view embedding: the base model's answer
        clean = torch.tensor([v.index == 0 for v in data.views])
        proxies0 = torch.zeros(int(data.labels.max()) + 1, model.config.dim)
        proxies0.index_add_(0, data.labels[clean], data.teacher[clean])
    proxies = nn.Parameter(F.normalize(proxies0, dim=1))
    params_tail = [p for p in tail.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params_tail, "lr": cfg.lr}, {"params": list(model.head.parameters()) + [proxies], "lr": cfg.head_lr}],
                            weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(data.views) / cfg.batch_size)
    total = min(steps_per_epoch * cfg.epochs, cfg.max_steps or 10**9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total)))))

    cfg.work.mkdir(parents=True, exist_ok=True)
    state_path = cfg.work / "adapt.state.pt"
    result = AdaptResult(cfg.work / BUNDLE_CHECKPOINT, len(catalog.images), len(catalog.iconic_samples()), len(data.views))
    epoch, step = 0, 0
    if state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if st.get("key") == run_key:
            model.load_state_dict(st["model"])
            with torch.no_grad():
                proxies.copy_(st["proxies"])
            opt.load_state_dict(st["opt"])
            sched.load_state_dict(st["sched"])
            epoch, step, result.losses = st["epoch"], st["step"], st["losses"]
            torch.set_rng_state(st["rng"])
            log.info("resumed from %s at epoch %d", state_path, epoch)
        else:
            log.warning("ignoring %s: written by another configuration", state_path)

    gen = torch.Generator()
    for epoch in range(epoch, cfg.epochs):
        if step >= total:
            break
        gen.manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(data.views), generator=gen)
        tail.train()
        for m in tail.modules():  # frozen BN statistics: small batches would make them noisy
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        losses: list[float] = []
        bar = tqdm(range(steps_per_epoch), desc=f"adapt {epoch + 1}/{cfg.epochs}", unit="step")
        for i in bar:
            if step >= total:
                break
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size].sort().values.numpy()
            x = random_feature_crop(torch.from_numpy(np.asarray(data.feats[idx], dtype=np.float32)), cfg.feature_crop, gen)
            z = embed_tail(model, tail, x)
            y = data.labels[idx]
            loss = cosface_loss(z, proxies, y, cfg.margin, cfg.scale)
            if cfg.pair_weight > 0:
                loss = loss + cfg.pair_weight * supcon_loss(z, y, cfg.pair_temperature)
            if cfg.distill_weight > 0:  # stay where the base model put each view (what it learnt from photos)
                loss = loss + cfg.distill_weight * (1 - (z * data.teacher[idx]).sum(dim=1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        result.losses.append(float(np.mean(losses)) if losses else float("nan"))
        torch.save({"key": run_key, "model": model.state_dict(), "proxies": proxies.detach(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "epoch": epoch + 1, "step": step, "losses": result.losses, "rng": torch.get_rng_state()},
                   state_path)
    model.eval()
    model.config.meta = {
        **{k: v for k, v in model.config.meta.items() if k not in ("adapt",)},
        "adapt": {"config": cfg.to_json(), "base_sha256": source_sha, "base_meta": blob.get("config", {}).get("meta", {}).get("train"),
                  "catalog": checked.to_json(),
                  "losses": result.losses},
    }
    save_checkpoint(model, result.checkpoint)
    result.seconds = time.time() - t0
    return result
