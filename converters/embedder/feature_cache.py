"""The frozen layers' outputs, computed once per seeded view and memmapped on disk.

The early trunk is frozen (ImageNet features transfer, and small shop data
would only make them noisy), and a frozen layer always computes the same thing
for the same input. So the outputs for a fixed, seeded set of augmented views
are cached as fp16 memmaps and an epoch costs only the trainable tail: that is
what makes many epochs affordable on a 2-core CPU.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from shoplens.converters.embedder.data import Sample, consumer_augment, load_resized, open_upright
from shoplens.converters.embedder.model import Embedder
from shoplens.converters.embedder.train_config import TrainConfig


@dataclass(frozen=True)
class View:
    sample: Sample
    index: int  # 0 = clean resize, >0 = seeded augmentation


#: draws an augmented view (index > 0) of a sample's image from the view's own seeded rng
Render = Callable[[View, Image.Image, int, random.Random], np.ndarray]


def consumer_view(view: View, image: Image.Image, size: int, rng: random.Random) -> np.ndarray:
    """The trainer's augmentation: a catalog image or shelf photo reframed and relit like a phone crop."""
    return consumer_augment(image, size, rng)


def view_rng(seed: int | str, view: View) -> random.Random:
    """The random source of one augmented view, seeded by the file and view index: a view is the same
    picture in every run and loader worker."""
    key = f"{seed}:{view.sample.path.name}:{view.index}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


class _ViewImages(torch.utils.data.Dataset):
    def __init__(self, views: list[View], size: int, seed: int, render: Render) -> None:
        self.views, self.size, self.seed, self.render = views, size, seed, render

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, i: int) -> np.ndarray:
        v = self.views[i]
        if v.index == 0:
            return load_resized(v.sample.path, self.size)
        return self.render(v, open_upright(v.sample.path), self.size, view_rng(self.seed, v))


@torch.no_grad()
def frozen_features(frozen: nn.Module, model: Embedder, views: list[View], size: int, seed: int, path: Path, desc: str,
                    render: Render = consumer_view) -> np.ndarray:
    """[N, C, H, W] fp16 outputs of the frozen layers for ``views``, memmapped at ``path`` (reused if complete).

    ``render`` draws the augmented views; a cache file holds one renderer's views, so its
    name must say which (``cache_key``'s label)."""
    done = path.with_suffix(".json")
    if done.is_file():
        meta = json.loads(done.read_text())
        return np.memmap(path, dtype=np.float16, mode="r", shape=tuple(meta["shape"]))
    probe = frozen(model.normalise_nchw(torch.zeros(1, 3, size, size)))
    shape = (len(views), *probe.shape[1:])
    path.parent.mkdir(parents=True, exist_ok=True)
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=shape)
    loader = torch.utils.data.DataLoader(_ViewImages(views, size, seed, render), batch_size=32, num_workers=1)
    i = 0
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        x = model.normalise_nchw(batch.permute(0, 3, 1, 2))
        f = frozen(x).numpy().astype(np.float16)
        mm[i : i + len(f)] = f
        i += len(f)
    mm.flush()
    done.write_text(json.dumps({"shape": list(shape)}))  # written last: its presence means the memmap is complete
    return np.memmap(path, dtype=np.float16, mode="r", shape=shape)


def cache_key(cfg: TrainConfig, label: str, views: list[View]) -> str:
    """File stem of a cache: everything that decides the frozen outputs (not the trainable part's options)."""
    h = hashlib.sha256()
    h.update(json.dumps([cfg.trunk, cfg.weights, cfg.random_init, cfg.input_size, cfg.trainable_units, cfg.seed, label]).encode())
    for v in views:
        h.update(f"{v.sample.path}:{v.index}\n".encode())
    return f"{label}-{h.hexdigest()[:16]}"


class Rows:
    """Row subset of a memmap without copying it (held-out runs reuse the full run's cache)."""

    def __init__(self, base: np.ndarray, rows: np.ndarray) -> None:
        self.base, self.rows = base, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: Any) -> np.ndarray:
        return self.base[self.rows[idx]]


def embed_tail(model: Embedder, tail: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """Embeddings from cached frozen features: the trainable tail, pooling and head."""
    return model.embed_features(model.pool_map(tail(feats)))


@torch.no_grad()
def embed_cached(model: Embedder, tail: nn.Module, feats: np.ndarray, batch: int = 128) -> np.ndarray:
    tail.eval()
    out = [embed_tail(model, tail, torch.from_numpy(np.asarray(feats[i : i + batch], dtype=np.float32))).numpy() for i in range(0, len(feats), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.config.dim), np.float32)
