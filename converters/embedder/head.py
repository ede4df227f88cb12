"""Closed-form head: PCA (optionally whitened) of pooled trunk features, baked into the linear layer.

Fitting the head takes minutes on CPU and needs no labels, so a shop can get a
reasonable 256-d space from its own catalog images before (or instead of)
fine-tuning; it is also the starting point of fine-tuning. The projection is
``y = W (x - mu)`` with W the top principal directions (divided by
sqrt(eigenvalue) when whitened), i.e. ``head.weight = W``, ``head.bias = -W mu``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from shoplens.converters.embedder.data import consumer_augment, load_batch, open_upright
from shoplens.converters.embedder.model import Embedder


def pca_projection(feats: np.ndarray, dim: int, whiten: bool = False, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(W [dim, F], b [dim]) projecting features onto their top ``dim`` principal directions."""
    n, f = feats.shape
    if n <= dim:
        raise ValueError(f"PCA to {dim} dims needs more than {dim} samples, got {n}: add images or use --views")
    if dim > f:
        raise ValueError(f"cannot project {f}-d features to {dim} dims")
    x = feats.astype(np.float64)
    mu = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
    w = vt[:dim]
    if whiten:
        var = (s[:dim] ** 2) / (n - 1)
        w = w / np.sqrt(var + eps)[:, None]
    # deterministic sign: largest-magnitude loading positive
    signs = np.sign(w[np.arange(dim), np.abs(w).argmax(axis=1)])
    w = w * signs[:, None]
    return w.astype(np.float32), (-w @ mu).astype(np.float32)


@torch.no_grad()
def pooled_features(model: Embedder, batches: Sequence[np.ndarray]) -> np.ndarray:
    """Pooled trunk features for uint8 NHWC batches."""
    model.eval()
    out = []
    for b in batches:
        x = model.normalise_nchw(torch.from_numpy(b).permute(0, 3, 1, 2))
        out.append(model.pooled(x).numpy())
    return np.concatenate(out)


def image_batches(paths: Sequence[Path], size: int, views: int = 0, seed: int = 0, batch: int = 32) -> list[np.ndarray]:
    """Clean resized images, plus ``views`` consumer-style augmentations of each (seeded)."""
    rng = random.Random(seed)
    batches = [load_batch(list(paths[i : i + batch]), size) for i in range(0, len(paths), batch)]
    aug: list[np.ndarray] = []
    for p in paths if views else ():
        im = open_upright(p)
        for _ in range(views):
            aug.append(consumer_augment(im, size, rng))
    batches += [np.stack(aug[i : i + batch]) for i in range(0, len(aug), batch)]
    return batches


def fit_head(model: Embedder, paths: Sequence[Path], *, whiten: bool = False, views: int = 0, seed: int = 0) -> dict[str, float]:
    """Fit ``model.head`` by PCA on the images; returns the explained-variance summary."""
    feats = pooled_features(model, image_batches(paths, model.config.input_size, views, seed))
    w, b = pca_projection(feats, model.config.dim, whiten=whiten)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(w))
        model.head.bias.copy_(torch.from_numpy(b))
    total = float(((feats - feats.mean(0)) ** 2).sum())
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    kept = float((((feats - feats.mean(0)) @ unit.T) ** 2).sum())
    model.config.meta["head"] = {"method": "pca-whiten" if whiten else "pca", "samples": int(len(feats))}
    return {"samples": float(len(feats)), "explained_variance": kept / total if total > 0 else 0.0}
