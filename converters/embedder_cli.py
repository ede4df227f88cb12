"""``shoplens convert embedder`` and ``shoplens embedder fit-head|train|eval|trunks``.

Heavy imports (torch, litert, coremltools) happen inside the commands so the
CLI starts fast and ``--help`` works without the convert extra.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
embedder_app = typer.Typer(help="Build the product embedder: fit a PCA head, fine-tune on a catalog, evaluate retrieval.", no_args_is_help=True)

DEFAULT_TRUNK = "resnet50v2-imagenet-s3"


def _default_checkpoint(name: str) -> Path:
    from shoplens.settings import get_settings

    return get_settings().cache_dir / "embedder" / f"{name}.pt"


def _catalog_dir(catalog: Optional[Path]) -> Path:
    if catalog is not None:
        return catalog
    from shoplens.resources import grocery_store

    return grocery_store().require(hint="Pass --catalog DIR (a folder with classes.csv and train.txt/val.txt).") / "dataset"


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@embedder_app.command("trunks")
def trunks() -> None:
    """List the trunk registry (name, feature dim, default weights)."""
    from shoplens.converters.trunks import TRUNKS

    table = Table(title="embedder trunks")
    for col in ("name", "dim", "stride", "default weights", "description"):
        table.add_column(col, overflow="fold")
    for t in TRUNKS.values():
        table.add_row(t.name, str(t.feature_dim), str(t.stride), t.default_weights, t.description)
    console.print(table)


@embedder_app.command("fit-head")
def fit_head_cmd(
    catalog: Optional[Path] = typer.Option(None, help="Catalog folder: classes.csv + split files (its train split and iconic images are used), or any image folder."),
    out: Optional[Path] = typer.Option(None, help="Checkpoint to write (default: <cache>/embedder/<trunk>-pca-<dim>.pt)."),
    trunk: str = typer.Option(DEFAULT_TRUNK, help="Trunk registry name (shoplens embedder trunks)."),
    weights: Optional[str] = typer.Option(None, help="Trunk weights: file, or torchvision enum name (IMAGENET1K_V2)."),
    random_init: bool = typer.Option(False, "--random", help="Random trunk (plumbing tests only; never ship)."),
    dim: int = typer.Option(256, help="Embedding dimension."),
    input_size: int = typer.Option(224, help="Square input size in pixels (the shipped model: 224)."),
    whiten: bool = typer.Option(False, help="Whiten the PCA projection."),
    views: int = typer.Option(0, help="Extra consumer-style augmented views per image."),
    limit: Optional[int] = typer.Option(None, help="Use at most this many images."),
    seed: int = typer.Option(0),
) -> None:
    """Fit the 256-d head in closed form: PCA of pooled trunk features of the catalog's images."""
    import torch

    from shoplens.converters.embedder_data import list_images, load_catalog
    from shoplens.converters.embedder_head import fit_head
    from shoplens.converters.embedder_model import EmbedderConfig, build_embedder, save_checkpoint

    torch.set_num_threads(2)
    root = _catalog_dir(catalog)
    if (root / "classes.csv").is_file():
        cat = load_catalog(root)
        paths = [s.path for s in cat.split("train")] + [s.path for s in cat.iconic_samples()]
    else:
        paths = list_images(root)
    if limit:
        paths = paths[:limit]
    model = build_embedder(EmbedderConfig(trunk=trunk, weights=weights or "", dim=dim, input_size=input_size), random_init=random_init)
    stats = fit_head(model, paths, whiten=whiten, views=views, seed=seed)
    out = out or _default_checkpoint(f"{trunk}-pca-{dim}")
    save_checkpoint(model, out)
    console.print(f"head fitted on {int(stats['samples'])} samples (explained variance {stats['explained_variance']:.3f}) -> {out}")


@embedder_app.command("train")
def train_cmd(
    catalog: Optional[Path] = typer.Option(None, help="Catalog folder with classes.csv (iconic images) and label files."),
    labels: str = typer.Option("train", help="Label split name or file (lines: path, product_id, ...)."),
    out: Optional[Path] = typer.Option(None, help="Checkpoint (default: <cache>/embedder/resnet50v2-s3-256.pt); <out>.state.pt makes reruns resume."),
    trunk: str = typer.Option(DEFAULT_TRUNK),
    weights: Optional[str] = typer.Option(None),
    random_init: bool = typer.Option(False, "--random", help="Random trunk (plumbing tests only; never ship)."),
    dim: int = typer.Option(256),
    input_size: int = typer.Option(224, help="Square input size in pixels (the shipped model: 224)."),
    epochs: int = typer.Option(12),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(2e-4, help="Learning rate of the trainable trunk units."),
    head_lr: float = typer.Option(2e-3, help="Learning rate of the head and class proxies."),
    trainable_units: int = typer.Option(3, help="Trainable last units of the trunk (the rest is frozen and cached)."),
    photo_views: int = typer.Option(3, help="Views per training photo (1 clean + augmented)."),
    iconic_views: int = typer.Option(16, help="Views per iconic image."),
    margin: float = typer.Option(0.2, help="CosFace margin."),
    scale: float = typer.Option(10.0, help="CosFace scale (logit temperature); lower keeps more of the space than the usual 30."),
    subcenters: int = typer.Option(1, min=1, max=16, help="CosFace proxies per product (sub-center CosFace; 1 = plain CosFace)."),
    pool: str = typer.Option("avg", help="Pooling of the trunk's feature map: avg or gem (generalised mean, learnable p)."),
    pair_weight: float = typer.Option(2.0, min=0.0, help="Weight of a photo-photo supervised contrastive term beside CosFace (0 = off; turns on class-balanced batches)."),
    pair_temperature: float = typer.Option(0.1, min=1e-3, help="Temperature of the photo-photo term."),
    distill_weight: float = typer.Option(0.0, min=0.0, help="Weight of a relational distillation term towards the starting embedding (ImageNet tail + PCA head): keeps the cosines between different products' views (0 = off)."),
    spread_weight: float = typer.Option(0.0, min=0.0, help="Weight of a spread term: dim / participation ratio of each batch's embeddings, pushing the space to use more of its dimensions (0 = off)."),
    proxy_weight: float = typer.Option(1.0, min=0.0, help="Weight of the CosFace (per-product proxy) term; 0 = proxy-free, the photo-photo term alone (needs --pair-weight > 0)."),
    projector: int = typer.Option(1024, min=0, help="Hidden width of a training-only MLP projector: the loss acts on projector(embedding), the projector is not exported; keeps the space general for new products (0 = off)."),
    direct_pair_weight: float = typer.Option(0.0, min=0.0, help="With --projector: weight of a photo-photo term on the exported embedding itself (trades new products for trained ones; 0 = off)."),
    classes_per_batch: int = typer.Option(16, min=1, help="Products per class-balanced batch (with --pair-weight > 0)."),
    feature_crop: float = typer.Option(0.7, min=0.05, max=1.0, help="Random crop of the cached feature map per batch, side >= this share (1.0 = off)."),
    select: str = typer.Option("best", help="Checkpoint to keep: the 'best' val photo->iconic R@1 epoch, the 'last' (with --no-eval: the last), or 'novel': a first run without --select-products of the training products picks the epoch where their photos find their iconic images best, then the real run on every product stops there (for new products; about 1.3-2x the time)."),
    select_products: int = typer.Option(10, min=1, help="With --select novel: training products kept out of the selection run."),
    interpolate: str = typer.Option("", help="Comma-separated factors a in [0, 1): each epoch also evaluates start + a * (tuned - start) (WiSE-FT), and --select best chooses among epoch x factor; empty = off."),
    holdout: int = typer.Option(0, help="Products kept out of training (to measure new-product retrieval)."),
    holdout_seed: int = typer.Option(0, help="Seed of which products --holdout keeps out (another split to check a held-out result on)."),
    seed: int = typer.Option(0),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip per-epoch retrieval evaluation on val."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: int = typer.Option(2),
) -> None:
    """Fine-tune on product ids (CosFace + a photo-photo contrastive term), iconic images as samples, consumer augmentation; seeded, resumable."""
    from shoplens.converters.embedder_model import POOLS
    from shoplens.converters.train_embedder import SELECTIONS, TrainConfig, TrainConfigError, train

    for value, allowed, hint in ((select, SELECTIONS, "--select"), (pool, POOLS, "--pool")):
        if value not in allowed:
            raise typer.BadParameter(f"{value!r}: use " + " or ".join(map(repr, allowed)), param_hint=hint)
    if select == "novel" and no_eval:
        raise typer.BadParameter("'novel' needs the per-epoch evaluation: drop --no-eval", param_hint="--select")
    try:
        factors = [float(x) for x in interpolate.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{interpolate!r}: use comma-separated numbers such as 0.5,0.7", param_hint="--interpolate") from None
    if any(not 0.0 <= a < 1.0 for a in factors):
        raise typer.BadParameter(f"{interpolate!r}: every factor must be in [0, 1)", param_hint="--interpolate")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = out or _default_checkpoint("resnet50v2-s3-256" if holdout == 0 else f"resnet50v2-s3-256-holdout{holdout}")
    cfg = TrainConfig(
        catalog=_catalog_dir(catalog), out=out, labels=labels, trunk=trunk, weights=weights, random_init=random_init, dim=dim,
        input_size=input_size, pool=pool, pair_weight=pair_weight, pair_temperature=pair_temperature, distill_weight=distill_weight, spread_weight=spread_weight, proxy_weight=proxy_weight, projector=projector, direct_pair_weight=direct_pair_weight, classes_per_batch=classes_per_batch, epochs=epochs, batch_size=batch_size, lr=lr, head_lr=head_lr, trainable_units=trainable_units,
        photo_views=photo_views, iconic_views=iconic_views, margin=margin, scale=scale, subcenters=subcenters, feature_crop=feature_crop, interpolate=factors,
        select=select if not no_eval else "last", select_products=select_products, holdout=holdout, holdout_seed=holdout_seed, seed=seed,
        max_steps=max_steps, evaluate=not no_eval, device=device, threads=threads,
    )
    try:
        result = train(cfg)
    except TrainConfigError as e:
        raise typer.BadParameter(str(e)) from None
    console.print(json.dumps({"checkpoint": str(result.checkpoint), "losses": result.losses, "metrics": result.metrics, "selected_epoch": result.selected_epoch, "selected_interpolation": result.selected_alpha, "seconds": round(result.seconds, 1)}, indent=2))


@embedder_app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Option(..., help="Embedder checkpoint (.pt)."),
    catalog: Optional[Path] = typer.Option(None),
    tflite: Optional[Path] = typer.Option(None, help="Evaluate this converted .tflite instead of the PyTorch model."),
    unseen: bool = typer.Option(True, help="Report unseen-product rows for products the checkpoint held out."),
) -> None:
    """Product-level recall@1/@5 of val photos against iconic, and iconic + train, catalogs."""
    import torch

    from shoplens.converters.embedder_convert import torch_embed
    from shoplens.converters.embedder_data import load_catalog
    from shoplens.converters.embedder_eval import RetrievalSets, embed_paths, evaluate_vectors
    from shoplens.converters.embedder_model import load_checkpoint
    from shoplens.converters.embedder_tflite import TFLiteEmbedder

    torch.set_num_threads(2)
    model, blob = load_checkpoint(checkpoint)
    run = TFLiteEmbedder(tflite) if tflite else torch_embed(model)
    sets = RetrievalSets.from_catalog(load_catalog(_catalog_dir(catalog)))
    size = model.config.input_size
    vec = {k: embed_paths(run, getattr(sets, k), size) for k in ("val", "iconic", "train")}
    held = set(model.config.meta.get("held_out_products", [])) if unseen else set()
    console.print(json.dumps(evaluate_vectors(sets, vec, unseen=held or None), indent=2))


def convert_embedder(
    checkpoint: Path = typer.Option(..., help="fp32 embedder checkpoint (shoplens embedder train / fit-head)."),
    targets: str = typer.Option("tflite,coreml", help="Comma list: tflite, coreml."),
    precision: str = typer.Option("fp32,int8", help="Comma list: fp32, fp16 (CoreML: fp16 compute; TFLite: fp16 weights, fp32 compute), int8, w8a32 / w8 (TFLite dynamic / weight-only); prefix with a target (tflite:w8a32, coreml:int8) to limit an entry to it."),
    calib: Optional[Path] = typer.Option(None, help="Calibration images for static int8 (default: catalog images, never the parity queries)."),
    calib_count: int = typer.Option(100),
    out: Path = typer.Option(..., help="Bundle directory (manifest.json, artifacts, parity report)."),
    parity_catalog: Optional[Path] = typer.Option(None, help="Labelled catalog for the parity gate (default: Grocery Store)."),
    parity_photos: int = typer.Option(300, help="Query photos for the parity gate (plus every iconic image)."),
    parity_catalog_photos: Optional[int] = typer.Option(None, help="Limit catalog photos embedded by the reference."),
    min_cos: float = typer.Option(0.99, help="Gate: minimum mean cosine to the fp32 reference."),
    min_overlap: float = typer.Option(0.95, help="Gate: minimum top-10 overlap."),
    name: Optional[str] = typer.Option(None, help="Bundle name (default: the folder name)."),
    coreml_parity_images: Optional[int] = typer.Option(None, help="CoreML numeric parity on the first N query images only (the numpy evaluator is slow)."),
) -> None:
    """Convert an embedder checkpoint to TFLite / CoreML with a parity gate; exits 1 if any artifact fails it."""
    from shoplens.converters.embedder_convert import ParityData, convert

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = ParityData.from_catalog(_catalog_dir(parity_catalog), parity_photos, parity_catalog_photos)
    result = convert(
        checkpoint, out, targets=_csv(targets), precisions=_csv(precision), parity=data, calib=calib, calib_count=calib_count,
        thresholds={"cos_mean": min_cos, "top10_overlap": min_overlap}, bundle_name=name, coreml_parity_images=coreml_parity_images,
    )
    table = Table(title=f"{result.manifest.name}: {result.manifest.embedder.model_id if result.manifest.embedder else ''}")
    for col in ("artifact", "MB", "cos mean", "cos min", "top-10", "R@1", "ref R@1", "gate"):
        table.add_column(col)
    by_file = {r.artifact: r for r in result.parity}
    for a in result.manifest.artifacts:
        r = by_file.get(a.file)
        m = r.metrics if r else {}
        gate = "pending" if r is None else ("pass" if r.passed else "FAIL")
        table.add_row(a.file, f"{a.size_bytes / 1e6:.1f}", *(f"{m[k]:.4f}" if k in m else "-" for k in ("cos_mean", "cos_min", "top10_overlap", "recall@1", "ref_recall@1")), gate)
    console.print(table)
    if not result.passed:
        for r in result.parity:
            if not r.passed:
                console.print(f"[bold red]parity gate failed[/] {r.artifact}: {'; '.join(r.failures)}")
        raise typer.Exit(1)


def register(convert_app: typer.Typer, root_app: typer.Typer) -> None:
    convert_app.command("embedder")(convert_embedder)
    root_app.add_typer(embedder_app, name="embedder")
