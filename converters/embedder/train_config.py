"""What a fine-tuning run trains: ``TrainConfig``, its validation, and the key a resumed run must match.

Every option's default and help live here, once: the ``shoplens embedder train``
command is generated from these fields (``embedder/cli.py``), and this module
imports no torch so ``--help`` stays fast. The defaults are the shipped recipe;
docs/embedder.md has the measurements behind each of them.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SELECT_METRIC = "photo_iconic_r@1"
NOVEL_METRIC = "novel_photo_iconic_r@1"
SELECTIONS = ("best", "last", "novel")

#: fields that change how fast a run goes, not what it trains: a run may resume with other values
EXECUTION_FIELDS = ("threads", "device")

#: options that were removed (experiments that did not help, docs/embedder.md) at the values that
#: turned them off. The training key keeps them so state files and checkpoints written before the
#: removal still match the same recipe; a run that used one of them no longer matches anything.
REMOVED_OPTIONS: dict[str, Any] = {
    "subcenters": 1,
    "distill_weight": 0.0,
    "spread_weight": 0.0,
    "proxy_weight": 1.0,
    "direct_pair_weight": 0.0,
    "interpolate": [],
}


def training_key(config_json: dict[str, Any]) -> dict[str, Any]:
    """What decides the weights a run produces, from ``TrainConfig.to_json()`` (or a checkpoint's ``meta["train"]``).

    A state file or checkpoint is reused only under an equal key.
    """
    key = {k: v for k, v in config_json.items() if k not in EXECUTION_FIELDS}
    return {**REMOVED_OPTIONS, **key}


class TrainConfigError(ValueError):
    """A configuration that cannot train (found before any work starts; the CLI exits 2 with it)."""


def _opt(default: Any, help: str, **cli: Any) -> Any:
    """A field with its CLI help (and extra typer.Option arguments such as ``min``) in its metadata."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "cli": cli})
    return field(default=default, metadata={"help": help, "cli": cli})


@dataclass
class TrainConfig:
    """One fine-tuning run; the defaults are the shipped recipe (docs/embedder.md, Results)."""

    catalog: Path = field(metadata={"help": (
        "The shop's catalog, as `shoplens index` reads it: catalog.csv, catalog.jsonl or a folder of <product_id>/ image folders; "
        "rows with role photo are labelled shopper photos to train on, role val photos to pick the epoch with (docs/sdk.md). "
        "Or a Grocery Store folder: classes.csv + train.txt/val.txt (the default: the Grocery Store dataset)."
    )})
    out: Path = field(metadata={"help": (
        "Checkpoint (default: <cache>/embedder/resnet50v2-s3-256[-<shop catalog file stem>][-holdout<N>].pt; another --trunk: "
        "<trunk>-<dim>[...].pt); <out>.state.pt makes reruns resume."
    )})
    labels: str = _opt("train", "Training photos: a split name (train = a shop catalog's role photo rows), or a Grocery label file (lines: path, product_id, ...).")
    trunk: str = _opt("resnet50v2-imagenet-s3", "Trunk registry name (shoplens embedder trunks).")
    weights: str | None = _opt(None, "Trunk weights: file, or torchvision enum name (default: the trunk's).")
    random_init: bool = _opt(False, "Random trunk (plumbing tests only; never ship).", flag="--random")
    input_size: int = _opt(224, "Square input size in pixels (the shipped model: 224).")
    dim: int = _opt(256, "Embedding dimension.")
    pool: str = _opt("avg", "Pooling of the trunk's feature map: avg or gem (generalised mean, learnable p).")
    epochs: int = _opt(12, "Epochs: with the projector the exported space improves for new products through all 12.")
    batch_size: int = _opt(64, "Views per batch.")
    lr: float = _opt(2e-4, "Learning rate of the trainable trunk units.")
    head_lr: float = _opt(2e-3, "Learning rate of the head, the class proxies and the projector.")
    weight_decay: float = _opt(1e-4, "AdamW weight decay.")
    trainable_units: int = _opt(3, "Trainable last units of the trunk (the rest is frozen and cached).")
    photo_views: int = _opt(3, "Views per training photo (1 clean + augmented).")
    iconic_views: int = _opt(16, "Views of each product's catalog images, shared among them (Grocery: its one iconic image, 16 views).")
    margin: float = _opt(0.2, "CosFace margin.")
    # lower than the usual 30: a high scale pulls every training view onto its product's proxy
    scale: float = _opt(10.0, "CosFace scale (logit temperature); lower keeps more of the space than the usual 30.")
    pair_weight: float = _opt(2.0, "Weight of a photo-photo supervised contrastive term beside CosFace (0 = off; turns on class-balanced batches).", min=0.0)
    pair_temperature: float = _opt(0.1, "Temperature of the photo-photo term.", min=1e-3)
    projector: int = _opt(
        1024,
        "Hidden width of a training-only MLP projector: the loss acts on projector(embedding), the projector is "
        "not exported; keeps the space general for new products (0 = off).",
        min=0,
    )
    classes_per_batch: int = _opt(16, "Products per class-balanced batch (with --pair-weight > 0).", min=1)
    feature_crop: float = _opt(0.7, "Random crop of the cached feature map per batch, side >= this share (1.0 = off).", min=0.05, max=1.0)
    select: str = _opt(
        "best",
        "Checkpoint to keep: the 'best' val photo->iconic R@1 epoch, the 'last' (with --no-eval: the last), or "
        "'novel': a first run without --select-products of the training products picks the epoch where their photos "
        "find their iconic images best, then the real run on every product stops there (for new products; about "
        "1.3-2x the time).",
    )
    select_products: int = _opt(10, "With --select novel: training products kept out of the selection run.", min=1)
    holdout: int = _opt(0, "Products kept out of training (to measure new-product retrieval).")
    holdout_seed: int = _opt(0, "Seed of which products --holdout keeps out (another split to check a held-out result on).")
    seed: int = _opt(0, "Seed of views, crops, batch order and initialisation.")
    max_photos: int | None = _opt(None, "Subsample the training photos (tests).")
    max_steps: int | None = _opt(None, "Stop after this many steps.")
    evaluate: bool = _opt(True, "Per-epoch retrieval evaluation on val (needed by --select best and novel).", flag="--eval/--no-eval")
    threads: int = _opt(2, "CPU threads (changes speed, not the run).")
    device: str = _opt("cpu", "cpu or cuda (changes speed, not the run).")
    cache_dir: Path | None = _opt(None, "Cache folder for the frozen-feature memmaps (default: the settings' cache dir).")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    def training_key(self) -> dict[str, Any]:
        return training_key(self.to_json())


def field_defaults() -> dict[str, Any]:
    """Each TrainConfig field's default (``MISSING`` for the required ones)."""
    out: dict[str, Any] = {}
    for f in fields(TrainConfig):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = MISSING
    return out


@dataclass
class TrainResult:
    checkpoint: Path
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    step_losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    held_out: list[int] = field(default_factory=list)
    selected_epoch: int = 0  # the epoch whose weights the checkpoint holds
    selection_history: list[dict[str, float]] = field(default_factory=list)  # select="novel": the selection run's epochs
    seconds: float = 0.0


def validate(cfg: TrainConfig) -> None:
    """Raise ``TrainConfigError`` for a configuration that cannot train, before any work starts."""
    if cfg.select not in SELECTIONS:
        raise TrainConfigError(f"select must be one of {SELECTIONS}, not {cfg.select!r}")
    if cfg.select in ("best", "novel") and not cfg.evaluate:
        raise TrainConfigError(f"select={cfg.select!r} needs the per-epoch evaluation (evaluate=True)")
    if cfg.pair_weight < 0 or cfg.pair_temperature <= 0 or not 1 <= cfg.classes_per_batch <= cfg.batch_size:
        raise TrainConfigError("pair_weight must be >= 0, pair_temperature > 0 and 1 <= classes_per_batch <= batch_size")
    if cfg.projector < 0:
        raise TrainConfigError(f"projector must be >= 0 (its hidden width; 0 = off), not {cfg.projector}")
    if not 0.0 < cfg.feature_crop <= 1.0:
        raise TrainConfigError(f"feature_crop must be in (0, 1], not {cfg.feature_crop}")
