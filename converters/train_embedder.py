"""Fine-tune the embedder on a catalog's product ids (CosFace / normalised softmax), fast on CPU.

Why it looks like this:
- Shop data is small (tens of photos per product, one iconic image), so the
  early trunk stays frozen (ImageNet features transfer) and only the last
  stage-3 units, the closing BN and the head learn. BN statistics stay frozen
  too (small batches would make them noisy and the export would differ).
- Frozen layers always compute the same thing for the same input, so their
  outputs for a fixed, seeded set of augmented views are computed once and
  cached on disk (fp16 memmap): an epoch then costs only the trainable tail,
  which makes minutes of 2-core CPU worth many epochs.
- Iconic catalog images are training samples of their product (with more
  augmented views, since there is one per product), and the augmentation makes
  them look like phone crops, so photos and catalog images meet in one space.
- Holding products out (``holdout``) trains on the rest and measures how well
  the space works for products added after training.
- State (model, proxies, optimiser, schedule, epoch) is checkpointed each epoch;
  rerunning the same command resumes. Everything is seeded.
- With 3 cached views per photo the tail memorises them after ~3 epochs (loss
  0.01, val R@1 peaked at epoch 3 and fell): ``feature_crop`` draws new views
  from the cache for free, and ``select="best"`` ships the best val epoch
  instead of the last.
- The CosFace scale is 10, not the usual 30: with ~30 photos per product a
  high scale drives every training view onto its proxy (loss ~0.02) and the
  space keeps little that transfers to new photos; at 10 val photo->iconic
  R@1 rose from 0.750 to 0.851.
- CosFace alone still left the iconic + train catalog below photo->iconic:
  a val photo's nearest item is always a train photo, and memorised train
  photos of look-alike products won. A supervised contrastive term inside
  class-balanced batches (``pair_weight``) shapes that photo-photo
  neighbourhood directly: val +train R@1 0.824 -> 0.858, iconic 0.851 -> 0.868.
- Both terms then shaped the exported space around the trained products, and
  products added later fell onto them (held-out new products peaked at epoch 2
  and fell). The loss now acts through a training-only MLP projector that is
  not exported (``projector``): the product-specific part stays in the
  projector, the exported space keeps what transfers, and new products rose
  through 12 epochs to 2.16x MobileNetV1 (from 1.70x), for 6 points of the
  trained products' photo->iconic R@1. That was one held-out split (the one it
  was chosen on); over four splits (benchmarks/embedder_holdout.py) it was better
  for new products on three of them, equal or mixed on the fourth, and on
  average 1.91x -> 2.10-2.17x MobileNetV1 on val, for ~14 points of the
  trained products' R@1 in those runs.
"""

from __future__ import annotations

import copy
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

from shoplens.converters.embedder_data import Catalog, Sample, consumer_augment, holdout_products, load_catalog, load_rgb
from shoplens.converters.embedder_eval import RetrievalSets, evaluate_vectors
from shoplens.converters.embedder_head import pca_projection
from shoplens.converters.embedder_model import Embedder, EmbedderConfig, build_embedder, save_checkpoint
from shoplens.settings import get_settings

log = logging.getLogger("shoplens.embedder.train")


EXECUTION_FIELDS = ("threads", "device")  # TrainConfig fields that do not change what a run trains


def training_key(config_json: dict[str, Any]) -> dict[str, Any]:
    """What decides the weights a run produces, from ``TrainConfig.to_json()`` (or a checkpoint's ``meta["train"]``).

    A state file or checkpoint is reused only under an equal key. The thread count and the
    device change how fast the same run goes, not what it trains, so a run interrupted
    here may resume with other settings or elsewhere.
    """
    return {k: v for k, v in config_json.items() if k not in EXECUTION_FIELDS}


@dataclass
class TrainConfig:
    catalog: Path
    out: Path
    labels: str = "train"  # split name or label file (``path, product_id, ...`` lines)
    trunk: str = "resnet50v2-imagenet-s3"
    weights: str | None = None
    random_init: bool = False
    # val photo->iconic R@1 (fp32): 160 px x 3 epochs 0.723 (~25 min on 2 CPU cores); 224 px x 5 epochs 0.753;
    # 224 px, feature crops, 6 epochs, best epoch: 0.750 / +train 0.787 at scale 30, 0.851 / 0.824 at scale 10
    # (~4 min per epoch once the feature cache (~13 min) exists); with pair_weight 2: 0.868 / 0.858 (the previous
    # bundle); with the projector and 12 epochs 0.807 / 0.865 and new products 1.70x -> 2.16x MobileNetV1 (shipped)
    input_size: int = 224
    dim: int = 256
    pool: str = "avg"
    # 12 with the projector (the shipped recipe): the exported space keeps improving for new products
    # through the whole schedule instead of peaking at epoch 2 (docs/embedder.md)
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-4  # trainable trunk units
    head_lr: float = 2e-3  # head + class proxies
    weight_decay: float = 1e-4
    trainable_units: int = 3
    photo_views: int = 3  # 1 clean + augmented, per training photo
    iconic_views: int = 16
    margin: float = 0.2
    # the usual CosFace scale (30) pulls every training view onto its product's proxy and keeps little else;
    # best-epoch val photo->iconic R@1: scale 30 0.750, 16 0.814, 10 0.851 (docs/embedder.md)
    scale: float = 10.0
    # proxies per product (sub-center CosFace): a photo is pulled to the nearest of its product's K
    # proxies, so a product may keep several looks (front/back, packaging variants) instead of one point;
    # on Grocery Store K=3 was worse (the iconic views take a sub-center of their own, away from the photos)
    subcenters: int = 1
    # a photo-photo term beside CosFace: supervised contrastive loss inside each batch (weight; 0 = off),
    # with batches of ``classes_per_batch`` products x (batch_size / classes_per_batch) views so each
    # view has positives; it works on what the +train catalog asks (is this photo's nearest photo its product?)
    pair_weight: float = 2.0
    pair_temperature: float = 0.1
    # relational distillation towards the starting embedding (ImageNet tail + PCA head; weight, 0 = off):
    # the mean squared change of the cosine between views of *different* products in a batch, so the
    # ImageNet space's relations between products are kept while same-product views still gather.
    # Meant for new products (the tuned space puts 90% of its variance in ~25 of 256 dims); on Grocery
    # Store at 10 it did not help them (docs/embedder.md: the start is itself that concentrated)
    distill_weight: float = 0.0
    # a spread term (weight; 0 = off): dim / participation ratio of the batch's embeddings, i.e.
    # dim * ||C||_F^2 / tr(C)^2 of their covariance C (1 when the variance fills every dimension).
    # Meant for the same concentration as above, from the other side: push the tuned space to use
    # more of its 256 dimensions. On Grocery Store at 0.1 it doubled the participation ratio but new
    # products were no better (docs/embedder.md): room in the space is not what they lack
    spread_weight: float = 0.0
    # weight of the CosFace (proxy) term; 0 = proxy-free, the photo-photo term alone (needs pair_weight > 0).
    # Proxies are one learnt vector per training product; a proxy-free loss shapes the space only by the
    # products in each batch, which metric learning often finds transfers better to unseen classes;
    # on Grocery Store it did not (new products 0.470 vs 0.506 with the proxies: docs/embedder.md)
    proxy_weight: float = 1.0
    # a training-only MLP projector (its hidden width; 0 = off): the loss terms (CosFace, photo-photo,
    # spread) act on normalise(projector(embedding)) and the projector is dropped at export, so the
    # exported 256-d space is one layer away from the loss. Supervised pre-training with such a projector
    # keeps more intra-class variation and transfers better to unseen classes (Wang et al., CVPR 2022,
    # "SL-MLP"), which is what new products need. On Grocery Store (held-out run, 12 epochs) it lifted
    # new products from 0.506 to 0.643 R@1 (2.16x MobileNetV1) and cost the trained ones some iconic
    # recall (full run: 0.807 / +train 0.865 against 0.868 / 0.858); the shipped recipe. Over four held-out
    # splits new products averaged 0.50-0.52 vs 0.454 val R@1 without it (better on 3 of 4 splits)
    projector: int = 1024
    # with a projector: weight of a photo-photo term on the exported embedding itself, beside the terms
    # behind the projector (0 = off). The in-batch clustering of the exported space is what the seen
    # products' retrieval needs and what specialises it, so this weight trades one for the other
    direct_pair_weight: float = 0.0
    classes_per_batch: int = 16
    # random crop of the cached frozen feature map per batch (side >= this share of it; 1.0 = off):
    # new views of the cached photos for free (the cache holds only ``photo_views`` per photo)
    feature_crop: float = 0.7
    # which epoch's weights to keep: "best" val photo->iconic R@1 (needs evaluate), the "last", or "novel":
    # a selection run first trains without ``select_products`` of the training products and picks the
    # epoch where those products' train-split photos find their iconic images best (all 81 iconic images
    # as the catalog; no val photo is used), then the real run trains on every training product and
    # stops after that epoch (same schedule). It picks for products added after training, at the cost
    # of a second run; "best" picks for the trained products, whose recall peaks later.
    select: str = "best"
    select_products: int = 10
    # weight-space interpolation towards the starting point (ImageNet tail + PCA head), WiSE-FT style:
    # each epoch also evaluates ``start + a * (tuned - start)`` for these a (< 1), and ``select="best"``
    # chooses among epoch x a; empty = off
    interpolate: list[float] = field(default_factory=list)
    holdout: int = 0
    holdout_seed: int = 0
    seed: int = 0
    max_photos: int | None = None  # subsample training photos (tests)
    max_steps: int | None = None  # stop early (tests)
    evaluate: bool = True
    threads: int = 2
    device: str = "cpu"
    cache_dir: Path | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    def training_key(self) -> dict[str, Any]:
        return training_key(self.to_json())


@dataclass
class TrainResult:
    checkpoint: Path
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    step_losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    held_out: list[int] = field(default_factory=list)
    selected_epoch: int = 0  # the epoch whose weights the checkpoint holds
    selected_alpha: float = 1.0  # its interpolation factor towards the start (1.0 = the tuned weights as they are)
    selection_history: list[dict[str, float]] = field(default_factory=list)  # select="novel": the selection run's epochs
    seconds: float = 0.0


# ---- frozen-feature cache --------------------------------------------------------


@dataclass(frozen=True)
class View:
    sample: Sample
    index: int  # 0 = clean resize, >0 = seeded augmentation


class _ViewImages(torch.utils.data.Dataset):
    def __init__(self, views: list[View], size: int, seed: int) -> None:
        self.views, self.size, self.seed = views, size, seed

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, i: int) -> np.ndarray:
        v = self.views[i]
        if v.index == 0:
            return load_rgb(v.sample.path, self.size)
        key = f"{self.seed}:{v.sample.path.name}:{v.index}".encode()
        rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
        with Image.open(v.sample.path) as im:
            return consumer_augment(im, self.size, rng)


@torch.no_grad()
def frozen_features(frozen: nn.Module, model: Embedder, views: list[View], size: int, seed: int, path: Path, desc: str) -> np.ndarray:
    """[N, C, H, W] fp16 outputs of the frozen layers for ``views``, memmapped at ``path`` (reused if complete)."""
    done = path.with_suffix(".json")
    if done.is_file():
        meta = json.loads(done.read_text())
        return np.memmap(path, dtype=np.float16, mode="r", shape=tuple(meta["shape"]))
    probe = frozen(model.normalise_nchw(torch.zeros(1, 3, size, size)))
    shape = (len(views), *probe.shape[1:])
    path.parent.mkdir(parents=True, exist_ok=True)
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=shape)
    loader = torch.utils.data.DataLoader(_ViewImages(views, size, seed), batch_size=32, num_workers=1)
    i = 0
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        x = model.normalise_nchw(batch.permute(0, 3, 1, 2))
        f = frozen(x).numpy().astype(np.float16)
        mm[i : i + len(f)] = f
        i += len(f)
    mm.flush()
    done.write_text(json.dumps({"shape": list(shape)}))
    return np.memmap(path, dtype=np.float16, mode="r", shape=shape)


def _cache_key(cfg: TrainConfig, label: str, views: list[View]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([cfg.trunk, cfg.weights, cfg.random_init, cfg.input_size, cfg.trainable_units, cfg.seed, label]).encode())
    for v in views:
        h.update(f"{v.sample.path}:{v.index}\n".encode())
    return f"{label}-{h.hexdigest()[:16]}"


class _Rows:
    """Row subset of a memmap without copying it (held-out runs)."""

    def __init__(self, base: np.ndarray, rows: np.ndarray) -> None:
        self.base, self.rows = base, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: Any) -> np.ndarray:
        return self.base[self.rows[idx]]


# ---- training --------------------------------------------------------------------


def _embed_tail(model: Embedder, tail: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    return model.embed_features(model.pool_map(tail(feats)))


@torch.no_grad()
def embed_cached(model: Embedder, tail: nn.Module, feats: np.ndarray, batch: int = 128) -> np.ndarray:
    tail.eval()
    out = [_embed_tail(model, tail, torch.from_numpy(np.asarray(feats[i : i + batch], dtype=np.float32))).numpy() for i in range(0, len(feats), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.config.dim), np.float32)


def make_projector(dim: int, hidden: int) -> nn.Module:
    """Linear-BN-ReLU-Linear, ``dim -> hidden -> dim``: the training-only projector (see TrainConfig.projector)."""
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


def cosface_loss(emb: torch.Tensor, proxies: torch.Tensor, target: torch.Tensor, margin: float, scale: float, subcenters: int = 1,
                 reduction: str = "mean") -> torch.Tensor:
    """Large-margin cosine loss: softmax over scale * (cos - margin on the true class).

    ``proxies`` is ``[classes * subcenters, dim]`` (class-major); a class's cosine
    is its best sub-center's, so only that one is pulled towards the sample.
    """
    cos = emb @ F.normalize(proxies, dim=1).T
    if subcenters > 1:
        cos = cos.view(len(emb), -1, subcenters).amax(dim=2)
    logits = scale * (cos - margin * F.one_hot(target, cos.shape[1]).to(cos.dtype))
    return F.cross_entropy(logits, target, reduction=reduction)


def subcenter_init(emb: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, k: int, gen: torch.Generator, iters: int = 10) -> torch.Tensor:
    """``[classes * k, dim]`` sub-centers: spherical k-means of each class's clean views.

    Sub-centers started at the class mean would all receive the same pulls and
    stay one point; starting them on the class's own clusters lets each keep a
    look. A class with fewer than ``k`` views repeats its mean (plus noise).
    """
    out = means.repeat_interleave(k, dim=0).clone()
    for c in range(len(means)):
        x = emb[labels == c]
        if len(x) < k:
            out[c * k : (c + 1) * k] = F.normalize(out[c * k : (c + 1) * k] + 1e-3 * torch.randn(k, means.shape[1], generator=gen), dim=1)
            continue
        centers = x[torch.randperm(len(x), generator=gen)[:k]].clone()
        for _ in range(iters):
            assign = (x @ centers.T).argmax(dim=1)
            for j in range(k):
                if (assign == j).any():
                    centers[j] = F.normalize(x[assign == j].mean(dim=0), dim=0)
        out[c * k : (c + 1) * k] = centers
    return out


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


def relation_distill_loss(emb: torch.Tensor, start_emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of cross-product cosines between the tuned and the starting embedding."""
    other = target[:, None] != target[None, :]
    if not other.any():
        return emb.sum() * 0.0
    return ((emb @ emb.T - start_emb @ start_emb.T)[other] ** 2).mean()


def spread_loss(emb: torch.Tensor) -> torch.Tensor:
    """``dim / participation ratio`` of the batch embeddings' covariance: 1 if isotropic, ``dim`` if on one axis."""
    z = emb - emb.mean(dim=0, keepdim=True)
    cov = z.T @ z / max(1, emb.shape[0] - 1)
    return emb.shape[1] * (cov**2).sum() / torch.diagonal(cov).sum().clamp_min(1e-12) ** 2


def class_balanced_order(labels: torch.Tensor, classes_per_batch: int, batch_size: int, gen: torch.Generator) -> list[np.ndarray]:
    """One epoch of batches with ``classes_per_batch`` products x ``batch_size // classes_per_batch`` views.

    Every view appears once: each product's views are shuffled and cut into
    chunks of K, and the chunks are shuffled and grouped P at a time (a batch
    may hold several chunks of a product with many views, or a short last chunk).
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
    """One random crop size for the batch (cropping in feature space ~ cropping the photo), own offset per sample."""
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


def interpolate_state(start: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], a: float) -> dict[str, torch.Tensor]:
    """``start + a * (tuned - start)`` for float tensors (integer buffers such as BN counters are taken from ``tuned``).

    Fine-tuning on ~80 products pulls the space towards them; part of the way back
    towards the ImageNet start keeps more of what transfers to products added later
    (WiSE-FT, Wortsman et al. 2022); the start is the same network, so the path is smooth.
    """
    return {k: (start[k] + a * (v - start[k])) if v.is_floating_point() else v for k, v in tuned.items()}


class TrainConfigError(ValueError):
    """A configuration that cannot train (found before any work starts; the CLI exits 2 with it)."""


SELECT_METRIC = "photo_iconic_r@1"
NOVEL_METRIC = "novel_photo_iconic_r@1"
SELECTIONS = ("best", "last", "novel")


def selection_products(catalog: Catalog, held: set[int], n: int, seed: int) -> set[int]:
    """A seeded set of ``n`` training products kept out of the selection run (never the held-out ones)."""
    ids = sorted(p for p in catalog.names if p not in held)
    if not 0 < n < len(ids):
        raise TrainConfigError(f"select_products must be in [1, {len(ids) - 1}] (training products: {len(ids)}), not {n}")
    return set(random.Random(f"select:{seed}").sample(ids, n))


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _validate(cfg: TrainConfig) -> None:
    if cfg.select not in SELECTIONS:
        raise TrainConfigError(f"select must be one of {SELECTIONS}, not {cfg.select!r}")
    if cfg.select in ("best", "novel") and not cfg.evaluate:
        raise TrainConfigError(f"select={cfg.select!r} needs the per-epoch evaluation (evaluate=True)")
    if cfg.subcenters < 1:
        raise TrainConfigError(f"subcenters must be >= 1, not {cfg.subcenters}")
    if cfg.pair_weight < 0 or cfg.pair_temperature <= 0 or not 1 <= cfg.classes_per_batch <= cfg.batch_size:
        raise TrainConfigError("pair_weight must be >= 0, pair_temperature > 0 and 1 <= classes_per_batch <= batch_size")
    if cfg.distill_weight < 0 or cfg.spread_weight < 0:
        raise TrainConfigError(f"distill_weight and spread_weight must be >= 0, not {cfg.distill_weight} / {cfg.spread_weight}")
    if cfg.projector < 0:
        raise TrainConfigError(f"projector must be >= 0 (its hidden width; 0 = off), not {cfg.projector}")
    if cfg.direct_pair_weight < 0 or (cfg.direct_pair_weight > 0 and not cfg.projector):
        raise TrainConfigError(f"direct_pair_weight {cfg.direct_pair_weight}: must be >= 0, and > 0 only with a projector (without one the pair term already acts on the embedding)")
    if cfg.proxy_weight < 0 or (cfg.proxy_weight == 0 and cfg.pair_weight == 0):
        raise TrainConfigError(f"proxy_weight {cfg.proxy_weight} with pair_weight {cfg.pair_weight}: need proxy_weight >= 0 and a loss term > 0")
    if not 0.0 < cfg.feature_crop <= 1.0:
        raise TrainConfigError(f"feature_crop must be in (0, 1], not {cfg.feature_crop}")
    if any(not 0.0 <= a < 1.0 for a in cfg.interpolate):
        raise TrainConfigError(f"interpolate factors must be in [0, 1), not {cfg.interpolate}")
    if cfg.interpolate and not cfg.evaluate:
        raise TrainConfigError("interpolate needs the per-epoch evaluation (evaluate=True)")
    if cfg.interpolate and cfg.select == "novel":
        raise TrainConfigError("interpolate chooses among factors on val; select='novel' chooses epochs only")


def train(cfg: TrainConfig) -> TrainResult:
    """Fine-tune and write ``cfg.out`` (the fp32 checkpoint); resumes from ``<out>.state.pt``.

    ``select="novel"`` runs twice (see TrainConfig.select): the selection run resumes
    from ``<out>.select.state.pt`` and writes no checkpoint of its own.
    """
    t0 = time.time()
    _validate(cfg)
    catalog: Catalog = load_catalog(cfg.catalog)
    held = holdout_products(catalog, cfg.holdout, cfg.holdout_seed)
    state_path = Path(str(cfg.out) + ".state.pt")
    if cfg.select != "novel":
        result = _train_run(cfg, catalog, held, state_path=state_path)
    else:
        novel = selection_products(catalog, held, cfg.select_products, cfg.seed)
        log.info("selection run: %d training products kept out to pick the epoch: %s", len(novel), sorted(novel))
        probe = _train_run(cfg, catalog, held, novel=novel, state_path=Path(str(cfg.out) + ".select.state.pt"), save=False)
        scores = [row[NOVEL_METRIC] for row in probe.history]
        epoch = 1 + int(np.argmax(scores))  # the first of equal scores: the shorter run
        log.info("selection run: %s by epoch %s -> training on every product for %d epoch(s)", NOVEL_METRIC, [round(x, 3) for x in scores], epoch)
        selection = {
            "selection": f"epoch with the best {NOVEL_METRIC} of {len(novel)} products kept out of a selection run",
            "selection_products": sorted(novel),
            "selection_history": probe.history,
        }
        result = _train_run(cfg, catalog, held, stop_after=epoch, state_path=state_path, meta=selection)
        result.selection_history = probe.history
    result.seconds = time.time() - t0
    return result


def _train_run(
    cfg: TrainConfig,
    catalog: Catalog,
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
    products = sorted(p for p in catalog.names if p not in held and p not in novel)
    cls_of = {p: i for i, p in enumerate(products)}

    # views of every product are cached (a held-out run reuses the full run's cache), then filtered
    photos = catalog.split(cfg.labels)
    if cfg.max_photos:
        photos = random.Random(cfg.seed).sample(photos, min(cfg.max_photos, len(photos)))
    all_views = [View(s, v) for s in photos for v in range(cfg.photo_views)]
    all_views += [View(s, v) for s in catalog.iconic_samples() for v in range(cfg.iconic_views)]
    keep = np.array([i for i, v in enumerate(all_views) if v.sample.product in cls_of])
    train_views = [all_views[i] for i in keep]

    mcfg = EmbedderConfig(trunk=cfg.trunk, weights=cfg.weights or "", dim=cfg.dim, pool=cfg.pool, input_size=cfg.input_size)
    model = build_embedder(mcfg, random_init=cfg.random_init)
    frozen, tail = model.trunk.split(cfg.trainable_units)
    cache_root = (cfg.cache_dir or get_settings().cache_dir) / "embedder_features"

    def cached(label: str, views: list[View]) -> np.ndarray:
        return frozen_features(frozen, model, views, cfg.input_size, cfg.seed, cache_root / f"{_cache_key(cfg, label, views)}.f16", label)

    feats_all = cached("train", all_views)
    feats = feats_all if len(keep) == len(all_views) else _Rows(feats_all, keep)
    labels = torch.tensor([cls_of[v.sample.product] for v in train_views])
    sets = RetrievalSets.from_catalog(catalog)
    eval_feats: dict[str, np.ndarray] = {}
    if cfg.evaluate:
        eval_feats = {k: cached(k, [View(s, 0) for s in getattr(sets, k)]) for k in ("val", "iconic", "train")}

    # head init: PCA of the pooled training features; proxies: class means in that space
    clean_idx = np.array([i for i, v in enumerate(train_views) if v.index == 0])
    with torch.no_grad():
        tail.eval()
        pooled = np.concatenate(
            [model.pool_map(tail(torch.from_numpy(np.asarray(feats[clean_idx[i : i + 128]], dtype=np.float32)))).numpy() for i in range(0, len(clean_idx), 128)]
        )
        w, b = pca_projection(pooled, cfg.dim) if len(pooled) > cfg.dim else (None, None)
        if w is not None:
            model.head.weight.copy_(torch.from_numpy(w))
            model.head.bias.copy_(torch.from_numpy(b))
        emb = model.embed_features(torch.from_numpy(pooled))
        projector = make_projector(cfg.dim, cfg.projector) if cfg.projector else None
        emb = project(projector, emb)  # proxies start at the class means in the space the loss sees
        proxies0 = torch.zeros(len(products), cfg.dim)
        proxies0.index_add_(0, labels[clean_idx], emb)
        proxies0 = F.normalize(proxies0 + 1e-6 * torch.randn_like(proxies0), dim=1)
        if cfg.subcenters > 1:
            proxies0 = subcenter_init(emb, labels[clean_idx], proxies0, cfg.subcenters, torch.Generator().manual_seed(cfg.seed))
    proxies = nn.Parameter(proxies0)
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # deterministic: rebuilt on resume
    start_model, start_tail = None, None
    if cfg.distill_weight > 0:  # a frozen copy of the starting point, for the distillation term
        start_model = copy.deepcopy(model).eval().requires_grad_(False)
        start_tail = start_model.trunk.split(cfg.trainable_units)[1]

    params_tail = [p for p in tail.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": params_tail, "lr": cfg.lr},
         {"params": list(model.head.parameters()) + [proxies] + (list(model.pool.parameters()) if model.pool else []) + (list(projector.parameters()) if projector else []),
          "lr": cfg.head_lr}],
        weight_decay=cfg.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train_views) / cfg.batch_size)
    if cfg.pair_weight > 0:  # the number of class-balanced batches depends on the labels only, not on the shuffle
        steps_per_epoch = len(class_balanced_order(labels, cfg.classes_per_batch, cfg.batch_size, torch.Generator().manual_seed(0)))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = min(50, max(1, total_steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total_steps))))
    )

    run_key = {**cfg.training_key(), "run": {"kept_out": sorted(novel), "stop_after": stop_after}}
    result = TrainResult(checkpoint=Path(cfg.out), held_out=sorted(held))
    start_epoch, step = 0, 0
    best: dict[str, Any] = {}  # epoch, score, model state of the best val epoch so far (select="best")
    if state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if st.get("config") == run_key:
            model.load_state_dict(st["model"])
            with torch.no_grad():
                proxies.copy_(st["proxies"])
            if projector is not None:
                projector.load_state_dict(st["projector"])
            opt.load_state_dict(st["opt"])
            sched.load_state_dict(st["sched"])
            start_epoch, step = st["epoch"], st["step"]
            result.losses, result.history, result.step_losses = st["losses"], st["history"], st.get("step_losses", [])
            best = st.get("best") or {}
            torch.set_rng_state(st["torch_rng"])
            log.info("resumed from %s at epoch %d", state_path, start_epoch)
        else:
            log.warning("ignoring %s: written by a different configuration", state_path)

    def run_eval() -> dict[str, float]:
        vec = {k: embed_cached(model, tail, f) for k, f in eval_feats.items()}
        return evaluate_vectors(sets, vec, unseen=held or None, novel=set(novel) or None)

    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(start_epoch, stop_after or cfg.epochs):
        if step >= total_steps:
            break
        gen.manual_seed(cfg.seed * 1000 + epoch)
        # drawn in both paths: the class-balanced batches then come from the same seeded stream as in the shipped run
        order = torch.randperm(len(train_views), generator=gen)
        batches = class_balanced_order(labels, cfg.classes_per_batch, cfg.batch_size, gen) if cfg.pair_weight > 0 else None
        tail.train()
        for m in tail.modules():  # frozen BN statistics (see module docstring)
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        epoch_losses: list[float] = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step")
        for i in bar:
            if step >= total_steps:
                break
            idx = batches[i] if batches is not None else order[i * cfg.batch_size : (i + 1) * cfg.batch_size].sort().values.numpy()
            x = random_feature_crop(torch.from_numpy(np.asarray(feats[idx], dtype=np.float32)), cfg.feature_crop, gen)
            emb = _embed_tail(model, tail, x)
            z = project(projector, emb)
            loss = emb.sum() * 0.0
            if cfg.proxy_weight > 0:
                loss = loss + cfg.proxy_weight * cosface_loss(z, proxies, labels[idx], cfg.margin, cfg.scale, cfg.subcenters)
            if cfg.pair_weight > 0:
                loss = loss + cfg.pair_weight * supcon_loss(z, labels[idx], cfg.pair_temperature)
            if cfg.direct_pair_weight > 0:
                loss = loss + cfg.direct_pair_weight * supcon_loss(emb, labels[idx], cfg.pair_temperature)
            if start_model is not None:
                with torch.no_grad():
                    start_emb = _embed_tail(start_model, start_tail, x)
                loss = loss + cfg.distill_weight * relation_distill_loss(emb, start_emb, labels[idx])
            if cfg.spread_weight > 0:
                loss = loss + cfg.spread_weight * spread_loss(z)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            epoch_losses.append(loss.item())
            result.step_losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(epoch_losses[-20:]):.3f}")
        result.losses.append(float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
        row = {"epoch": float(epoch + 1), "loss": result.losses[-1]}
        if cfg.evaluate:
            row.update(run_eval())
        tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
        candidates = [(1.0, row.get(SELECT_METRIC, float("nan")))]
        for a in cfg.interpolate:
            model.load_state_dict(interpolate_state(start_state, tuned, a))
            m = run_eval()
            row.update({f"a{a:g}/{k}": v for k, v in m.items() if k != "queries" and k != "unseen_queries"})
            candidates.append((a, m[SELECT_METRIC]))
        model.load_state_dict(tuned)
        result.history.append(row)
        log.info("epoch %d: %s", epoch + 1, json.dumps(row))
        if cfg.select == "best":
            a, score = max(candidates, key=lambda c: c[1])  # ties keep the larger factor (listed first)
            if not best or score > best["score"]:
                state = tuned if a == 1.0 else interpolate_state(start_state, tuned, a)
                best = {"epoch": epoch + 1, "alpha": a, "score": score, "model": state}
        state_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"config": run_key, "model": model.state_dict(), "proxies": proxies.detach(),
             "projector": projector.state_dict() if projector is not None else None, "opt": opt.state_dict(), "sched": sched.state_dict(),
             "epoch": epoch + 1, "step": step, "losses": result.losses, "history": result.history, "step_losses": result.step_losses,
             "torch_rng": torch.get_rng_state(), "best": best},
            state_path,
        )

    selected, alpha = len(result.history), 1.0
    if best:  # ship the best val epoch: restore its weights (chosen on val, the set the figures are reported on)
        model.load_state_dict(best["model"])
        selected, alpha = best["epoch"], best.get("alpha", 1.0)
    if cfg.evaluate:  # the selected epoch's evaluation is the final one; evaluate only if no epoch ran it
        row = result.history[selected - 1] if result.history else {}
        prefix = "" if alpha == 1.0 else f"a{alpha:g}/"
        picked = {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix) and "/" not in k[len(prefix):] and k not in ("epoch", "loss")}
        result.metrics = run_eval() if "queries" not in row else {**picked, **{k: row[k] for k in ("queries", "unseen_queries") if k in row}}
    result.selected_epoch = selected
    result.selected_alpha = alpha
    if not save:
        return result
    model.config.meta.update({
        "train": cfg.to_json(),
        "held_out_products": sorted(held),
        "metrics": result.metrics,
        "history": result.history,
        "selected_epoch": selected,
        "selected_interpolation": alpha,
        "selection": f"best val {SELECT_METRIC}" if best else "last epoch",
        **(meta or {}),
    })
    save_checkpoint(model, cfg.out)
    return result
