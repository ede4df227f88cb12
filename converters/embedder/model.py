"""The embedder network and its checkpoint: uint8 RGB in, unit-length 256-d vector out, all in one graph.

Everything between the camera crop and the vector lives in the model
(uint8 -> float, the trunk's per-channel normalisation (ImageNet mean/std, or
[-1, 1] for EfficientNet-Lite), trunk, pooling, linear head, L2), so a phone only resizes the crop and the converted artifacts cannot
drift from the reference by a mis-copied mean/std. Per-channel normalisation
stays in the graph because a CoreML ImageType has a single scale (folding it
there cost cos 0.9935 on ResNet50 fp16).

The checkpoint is a plain dict (trunk name, weights label, dims, input size,
state dict); its file sha256 is the ``source.weights_sha256`` that the model id
is derived from.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shoplens.converters.embedder.trunks import DEFAULT_TRUNK, get_trunk

CHECKPOINT_FORMAT = "shoplens-embedder-v1"


@dataclass
class EmbedderConfig:
    trunk: str = DEFAULT_TRUNK
    weights: str = ""  # registry weights label (file, enum) or "random-init"
    dim: int = 256
    pool: str = "avg"  # avg | gem
    gem_p: float = 3.0
    input_size: int = 224
    meta: dict[str, Any] = field(default_factory=dict)

    def preprocessing(self) -> dict[str, Any]:
        """The canonical preprocessing (hashed into the model id): what the device must do before the model."""
        spec = get_trunk(self.trunk)
        return {
            "input_size": [self.input_size, self.input_size],
            "resize": "stretch",
            "color_order": "RGB",
            "input_dtype": "uint8",
            "range": [0, 255],
            "normalization_in_graph": {"mean": list(spec.mean), "std": list(spec.std), "scale": 1 / 255},
        }


class GeM(nn.Module):
    """Generalised-mean pooling (p=1 average, p->inf max); p is learnable."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


POOLS = ("avg", "gem")


class Embedder(nn.Module):
    """Trunk -> pool -> linear -> L2. ``forward`` takes NHWC uint8-valued RGB (any dtype), 0-255."""

    def __init__(self, config: EmbedderConfig, trunk: nn.Module) -> None:
        super().__init__()
        spec = get_trunk(config.trunk)
        if config.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, not {config.pool!r}")
        if config.input_size % spec.input_multiple:
            raise ValueError(f"trunk {spec.name} needs an input size that is a multiple of {spec.input_multiple}, not {config.input_size}")
        self.config = config
        self.trunk = trunk
        self.pool: nn.Module | None = GeM(config.gem_p) if config.pool == "gem" else None
        self.head = nn.Linear(spec.feature_dim, config.dim)
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("inv_std", 1.0 / std, persistent=False)

    def normalise_nchw(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) - self.mean) * self.inv_std

    def pool_map(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.pool(fmap) if self.pool is not None else fmap.mean(dim=(2, 3))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features of a normalised NCHW batch (what PCA and the head see)."""
        return self.pool_map(self.trunk(x))

    def embed_features(self, pooled: torch.Tensor) -> torch.Tensor:
        # broadcast divide instead of F.normalize: its expand_as becomes a `tile` op in CoreML
        y = self.head(pooled)
        return y / torch.sqrt((y * y).sum(dim=1, keepdim=True) + 1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).permute(0, 3, 1, 2)
        return self.embed_features(self.pooled(self.normalise_nchw(x)))


class EmbedderNCHW(nn.Module):
    """The same model taking NCHW float 0-255 (a CoreML ImageType's tensor)."""

    def __init__(self, model: Embedder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.embed_features(m.pooled(m.normalise_nchw(x)))


def build_embedder(config: EmbedderConfig, *, random_init: bool = False) -> Embedder:
    """A fresh embedder: pretrained trunk from the registry, head initialised (random, to be fitted/trained)."""
    spec = get_trunk(config.trunk)
    config.weights = spec.weights_label(config.weights or None, random_init=random_init)
    trunk = spec.build(None if random_init or config.weights == "random-init" else config.weights, random_init=random_init)
    torch.manual_seed(0)
    model = Embedder(config, trunk)
    return model.eval()


def save_checkpoint(model: Embedder, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write atomically; the file's sha256 becomes the model id's source hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": CHECKPOINT_FORMAT, "config": asdict(model.config), "state_dict": model.state_dict(), **(extra or {})}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[Embedder, dict[str, Any]]:
    """Rebuild the embedder from a checkpoint without touching the trunk's source weights."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=False)
    if blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a shoplens embedder checkpoint (format {blob.get('format')!r})")
    config = EmbedderConfig(**blob["config"])
    trunk = get_trunk(config.trunk).build(random_init=True)  # weights come from the state dict
    model = Embedder(config, trunk)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob
