"""The training objective: CosFace over product ids, a photo-photo contrastive term, and the projector they act through.

Also the batch composition both depend on (class-balanced batches) and the
free augmentation of cached features (random crops of the frozen feature map).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def make_projector(dim: int, hidden: int) -> nn.Module:
    """Linear-BN-ReLU-Linear, ``dim -> hidden -> dim``: the training-only projector (see TrainConfig.projector).

    The loss shapes the projector's output; the exported space sits one layer
    away from it and keeps more of what transfers to products added later
    (supervised pre-training with an MLP projector, Wang et al., CVPR 2022).
    """
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim))


def project(projector: nn.Module | None, emb: torch.Tensor) -> torch.Tensor:
    """The space the loss sees: ``emb`` itself, or the normalised projector output.

    A batch of one view (a short last batch) cannot train BatchNorm, so it goes
    through the projector's running statistics instead of failing the run.
    """
    if projector is None:
        return emb
    if len(emb) > 1 or not projector.training:
        return F.normalize(projector(emb), dim=1)
    projector.eval()
    try:
        return F.normalize(projector(emb), dim=1)
    finally:
        projector.train()


def cosface_loss(emb: torch.Tensor, proxies: torch.Tensor, target: torch.Tensor, margin: float, scale: float,
                 reduction: str = "mean") -> torch.Tensor:
    """Large-margin cosine loss: softmax over ``scale * (cos - margin on the true class)``, one proxy per class."""
    cos = emb @ F.normalize(proxies, dim=1).T
    logits = scale * (cos - margin * F.one_hot(target, cos.shape[1]).to(cos.dtype))
    return F.cross_entropy(logits, target, reduction=reduction)


def supcon_loss(emb: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over one batch of L2-normalised embeddings.

    Each view is pulled towards the other views of its product and pushed from
    the rest of the batch; views without a positive in the batch do not count.
    """
    logits = emb @ emb.T / temperature
    self_mask = torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (target[:, None] == target[None, :]) & ~self_mask
    n_pos = pos.sum(dim=1)
    has = n_pos > 0
    if not has.any():
        return emb.sum() * 0.0
    per = -(log_prob.masked_fill(~pos, 0.0).sum(dim=1)[has] / n_pos[has])
    return per.mean()


def class_balanced_order(labels: torch.Tensor, classes_per_batch: int, batch_size: int, gen: torch.Generator) -> list[np.ndarray]:
    """One epoch of batches with ``classes_per_batch`` products x ``batch_size // classes_per_batch`` views.

    The contrastive term needs positives in every batch. Every view appears
    once: each product's views are shuffled and cut into chunks of K, and the
    chunks are shuffled and grouped P at a time (a batch may hold several chunks
    of a product with many views, or a short last chunk).
    """
    k = max(1, batch_size // classes_per_batch)
    chunks: list[torch.Tensor] = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        chunks += list(idx.split(k))
    order = torch.randperm(len(chunks), generator=gen).tolist()
    per_batch = max(1, batch_size // k)
    return [torch.cat([chunks[j] for j in order[i : i + per_batch]]).sort().values.numpy() for i in range(0, len(order), per_batch)]


def random_feature_crop(x: torch.Tensor, min_share: float, gen: torch.Generator) -> torch.Tensor:
    """One random crop size for the batch, its own offset per sample.

    Cropping the frozen feature map is close to cropping the photo, so the cache
    (a few views per photo) yields new views every epoch at no cost.
    """
    if min_share >= 1.0:
        return x
    h, w = x.shape[-2:]
    lo_h, lo_w = max(1, math.ceil(min_share * h)), max(1, math.ceil(min_share * w))
    ch = int(torch.randint(lo_h, h + 1, (1,), generator=gen))
    cw = int(torch.randint(lo_w, w + 1, (1,), generator=gen))
    if (ch, cw) == (h, w):
        return x
    oy = torch.randint(0, h - ch + 1, (len(x),), generator=gen).tolist()
    ox = torch.randint(0, w - cw + 1, (len(x),), generator=gen).tolist()
    return torch.stack([xi[:, y : y + ch, x0 : x0 + cw] for xi, y, x0 in zip(x, oy, ox)])
