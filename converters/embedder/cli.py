"""``shoplens convert embedder`` and ``shoplens embedder fit-head|train|eval|trunks``.

Heavy imports (torch, litert, coremltools) happen inside the commands so the
CLI starts fast and ``--help`` works without the convert extra.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import typing
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from shoplens.converters.embedder.train_config import TrainConfig, field_defaults

console = Console()
embedder_app = typer.Typer(help="Build the product embedder: fit a PCA head, fine-tune on a catalog, adapt a bundle to new products from their catalog images, evaluate retrieval.", no_args_is_help=True)

_DEFAULTS = field_defaults()  # fit-head shares the trainer's trunk, size and dimension defaults


def _default_checkpoint(name: str) -> Path:
    from shoplens.settings import get_settings

    return get_settings().cache_dir / "embedder" / f"{name}.pt"


def _catalog_dir(catalog: Optional[Path]) -> Path:
    if catalog is not None:
        return catalog
    from shoplens.resources import grocery_store

    return grocery_store().require(hint="Pass --catalog DIR (a folder with classes.csv and train.txt/val.txt).") / "dataset"


def _catalog_exit(exc: Exception) -> typer.Exit:
    """A bad catalog (``CatalogDataError``): every bad row printed as is (one per line, not boxed), exit 2."""
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


def _load_catalog(path: Path) -> Any:
    """``data.load_catalog`` (a shop catalog or the Grocery layout), exiting 2 with the bad rows of a bad catalog."""
    from shoplens.converters.embedder.data import CatalogDataError, load_catalog

    try:
        return load_catalog(path)
    except CatalogDataError as exc:
        raise _catalog_exit(exc) from None


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@embedder_app.command("trunks")
def trunks() -> None:
    """List the trunk registry (name, feature dim, stride, input scaling, default weights, licence)."""
    from shoplens.converters.embedder.trunks import IMAGENET_MEAN, TRUNKS

    table = Table(title="embedder trunks")
    for col in ("name", "dim", "stride", "input", "default weights", "licence", "description"):
        table.add_column(col, overflow="fold")
    for t in TRUNKS.values():
        scaling = "ImageNet mean/std" if t.mean == IMAGENET_MEAN else f"(x - {t.mean[0] * 255:g}) / {t.std[0] * 255:g}"
        table.add_row(t.name, str(t.feature_dim), str(t.stride), scaling, t.default_weights, t.license, t.description)
    console.print(table)


@embedder_app.command("fit-head")
def fit_head_cmd(
    catalog: Optional[Path] = typer.Option(None, help="A catalog (catalog.csv / .jsonl, or a Grocery folder with classes.csv + split files: its catalog images and training photos are used), or any image folder."),
    out: Optional[Path] = typer.Option(None, help="Checkpoint to write (default: <cache>/embedder/<trunk>-pca-<dim>.pt)."),
    trunk: str = typer.Option(_DEFAULTS["trunk"], help="Trunk registry name (shoplens embedder trunks)."),
    weights: Optional[str] = typer.Option(None, help="Trunk weights: file, or torchvision enum name (IMAGENET1K_V2); default: the trunk's."),
    random_init: bool = typer.Option(False, "--random", help="Random trunk (plumbing tests only; never ship)."),
    dim: int = typer.Option(_DEFAULTS["dim"], help="Embedding dimension."),
    input_size: int = typer.Option(_DEFAULTS["input_size"], help="Square input size in pixels (the shipped model: 224)."),
    whiten: bool = typer.Option(False, help="Whiten the PCA projection."),
    views: int = typer.Option(0, help="Extra consumer-style augmented views per image."),
    limit: Optional[int] = typer.Option(None, help="Use at most this many images."),
    seed: int = typer.Option(0),
) -> None:
    """Fit the 256-d head in closed form: PCA of pooled trunk features of the catalog's images."""
    import torch

    from shoplens.converters.embedder.data import is_grocery_layout, list_images
    from shoplens.converters.embedder.head import fit_head
    from shoplens.converters.embedder.model import EmbedderConfig, build_embedder, save_checkpoint

    torch.set_num_threads(2)
    root = _catalog_dir(catalog)
    if root.is_file() or is_grocery_layout(root):
        cat = _load_catalog(root)
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


def _train_options() -> list[inspect.Parameter]:
    """One typer option per TrainConfig field, with the field's default and help (the one place they are written)."""
    hints = typing.get_type_hints(TrainConfig)
    params = []
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional = type(None) in typing.get_args(kind)
        base = args[0] if optional else kind
        default = f.default if f.default is not dataclasses.MISSING else None
        extra = dict(f.metadata.get("cli", {}))
        decls = [extra.pop("flag")] if "flag" in extra else []
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(default, *decls, help=f.metadata.get("help"), **extra),
            annotation=Optional[base] if optional or default is None else base,
        ))
    return params


def _default_train_out(catalog: Optional[Path], holdout: int, trunk: str = _DEFAULTS["trunk"], dim: int = _DEFAULTS["dim"]) -> Path:
    """``<cache>/embedder/resnet50v2-s3-256[-<shop catalog>][-holdout<N>].pt`` (another trunk: ``<trunk>-<dim>...``):
    a shop's run never overwrites the Grocery one, nor one trunk's run another's."""
    from shoplens.converters.embedder.data import is_grocery_layout

    stem = "resnet50v2-s3-256" if trunk == _DEFAULTS["trunk"] else f"{trunk}-{dim}"
    shop = f"-{catalog.stem}" if catalog is not None and not is_grocery_layout(catalog) else ""
    return _default_checkpoint(stem + shop + (f"-holdout{holdout}" if holdout else ""))


def train_cmd(**options: Any) -> None:
    """Fine-tune on product ids (CosFace + a photo-photo contrastive term), catalog images as samples, consumer augmentation; seeded, resumable.

    Train on a shop's own catalog (the file `shoplens index` reads, with labelled shopper photos as
    role=photo rows and a few role=val rows) with `shoplens embedder train --catalog catalog.csv`;
    without role=val rows add `--no-eval`. Every image is checked before any work: a bad row exits 2, naming it.
    """
    from shoplens.converters.embedder.data import CatalogDataError
    from shoplens.converters.embedder.model import POOLS
    from shoplens.converters.embedder.train import SELECTIONS, TrainConfigError, train

    for value, allowed, hint in ((options["select"], SELECTIONS, "--select"), (options["pool"], POOLS, "--pool")):
        if value not in allowed:
            raise typer.BadParameter(f"{value!r}: use " + " or ".join(map(repr, allowed)), param_hint=hint)
    if options["select"] == "novel" and not options["evaluate"]:
        raise typer.BadParameter("'novel' needs the per-epoch evaluation: drop --no-eval", param_hint="--select")
    if not options["evaluate"]:
        options["select"] = "last"  # without per-epoch figures there is no best epoch to pick
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    options["out"] = options["out"] or _default_train_out(options["catalog"], options["holdout"], options["trunk"], options["dim"])
    options["catalog"] = _catalog_dir(options["catalog"])
    try:
        result = train(TrainConfig(**options))
    except TrainConfigError as e:
        raise typer.BadParameter(str(e)) from None
    except CatalogDataError as e:
        raise _catalog_exit(e) from None
    console.print(json.dumps({"checkpoint": str(result.checkpoint), "losses": result.losses, "metrics": result.metrics, "selected_epoch": result.selected_epoch, "seconds": round(result.seconds, 1)}, indent=2))


train_cmd.__signature__ = inspect.Signature(_train_options())  # type: ignore[attr-defined]
train_cmd.__annotations__ = {p.name: p.annotation for p in train_cmd.__signature__.parameters.values()}  # type: ignore[attr-defined]
embedder_app.command("train")(train_cmd)

from shoplens.converters.embedder.adapt_cli import adapt_cmd  # noqa: E402  (imports typer and the stdlib only: --help stays fast)

embedder_app.command("adapt")(adapt_cmd)


@embedder_app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Option(..., help="Embedder checkpoint (.pt)."),
    catalog: Optional[Path] = typer.Option(None, help="Labelled catalog: catalog.csv / .jsonl with role=val photos, or a Grocery folder (default: Grocery Store)."),
    tflite: Optional[Path] = typer.Option(None, help="Evaluate this converted .tflite of a bundle (run by the SDK from the bundle's manifest) instead of the PyTorch model."),
    unseen: bool = typer.Option(True, help="Report unseen-product rows for products the checkpoint held out."),
) -> None:
    """Product-level recall@1/@5 of val photos against iconic, and iconic + train, catalogs."""
    import torch

    from shoplens.contract.manifest import load_manifest
    from shoplens.converters.embedder.convert import torch_embed
    from shoplens.converters.embedder.evaluate import RetrievalSets, embed_paths, evaluate_vectors
    from shoplens.converters.embedder.model import load_checkpoint
    from shoplens.converters.embedder.parity import artifact_embedder, embed_photos

    torch.set_num_threads(2)
    model, blob = load_checkpoint(checkpoint)
    sets = RetrievalSets.from_catalog(_load_catalog(_catalog_dir(catalog)))
    keys = ("val", "iconic", "train")
    if tflite is None:
        vec = {k: embed_paths(torch_embed(model), getattr(sets, k), model.config.input_size) for k in keys}
    else:
        entry = next((a for a in load_manifest(tflite.parent).artifacts if a.file == tflite.name), None)
        if entry is None:
            raise typer.BadParameter(f"{tflite.name} is not listed in {tflite.parent / 'manifest.json'}", param_hint="--tflite")
        run = artifact_embedder(tflite.parent, entry)
        assert run is not None  # a TFLite entry always has the SDK runtime
        vec = {k: embed_photos(run, getattr(sets, k)) for k in keys}
    held = set(model.config.meta.get("held_out_products", [])) if unseen else set()
    console.print(json.dumps(evaluate_vectors(sets, vec, unseen=held or None), indent=2))


def convert_embedder(
    checkpoint: Path = typer.Option(..., help="fp32 embedder checkpoint (shoplens embedder train / fit-head)."),
    targets: str = typer.Option("tflite,coreml", help="Comma list: tflite, coreml."),
    precision: str = typer.Option("fp32,int8", help="Comma list: fp32, fp16 (CoreML: fp16 compute; TFLite: fp16 weights, fp32 compute), int8, w8a32 / w8 (TFLite dynamic / weight-only); prefix with a target (tflite:w8a32, coreml:int8) to limit an entry to it."),
    calib: Optional[Path] = typer.Option(None, help="Calibration images for static int8 (default: catalog images, never the parity queries)."),
    calib_count: int = typer.Option(100),
    out: Path = typer.Option(..., help="Bundle directory (manifest.json, artifacts, parity report)."),
    parity_catalog: Optional[Path] = typer.Option(None, help="Labelled catalog for the parity gate: catalog.csv / .jsonl with role=val photos, or a Grocery folder (default: Grocery Store)."),
    parity_photos: int = typer.Option(300, help="Query photos for the parity gate (plus every iconic image)."),
    parity_catalog_photos: Optional[int] = typer.Option(None, help="Limit catalog photos embedded by the reference."),
    min_cos: float = typer.Option(0.99, help="Gate: minimum mean cosine to the fp32 reference."),
    min_overlap: float = typer.Option(0.95, help="Gate: minimum top-10 overlap."),
    name: Optional[str] = typer.Option(None, help="Bundle name (default: the folder name)."),
    coreml_parity_images: Optional[int] = typer.Option(None, help="CoreML numeric parity on the first N query images only (the numpy evaluator is slow)."),
) -> None:
    """Convert an embedder checkpoint to TFLite / CoreML with a parity gate; exits 1 if any artifact fails it."""
    from shoplens.converters.common.errors import ConversionError
    from shoplens.converters.embedder.convert import EmbedderConvertOptions, ParityData
    from shoplens.converters.embedder.convert import convert_embedder as run_conversion
    from shoplens.converters.embedder.data import CatalogDataError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        data = ParityData.from_catalog(_catalog_dir(parity_catalog), parity_photos, parity_catalog_photos)
    except CatalogDataError as exc:
        raise _catalog_exit(exc) from None
    try:
        result = run_conversion(EmbedderConvertOptions(
            checkpoint=checkpoint, out=out, parity=data, targets=_csv(targets), precisions=_csv(precision), calib=calib, calib_count=calib_count,
            thresholds={"cos_mean": min_cos, "top10_overlap": min_overlap}, name=name, coreml_parity_images=coreml_parity_images,
        ))
    except ConversionError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    table = Table(title=f"{result.manifest.name}: {result.manifest.embedder.model_id if result.manifest.embedder else ''}")
    for col in ("artifact", "MB", "cos mean", "cos min", "top-10", "R@1", "ref R@1", "gate"):
        table.add_column(col)
    by_file = {r.artifact: r for r in result.results}
    for a in result.manifest.artifacts:
        r = by_file.get(a.file)
        m = r.metrics if r else {}
        gate = "pending" if r is None else ("pass" if r.passed else "FAIL")
        table.add_row(a.file, f"{a.size_bytes / 1e6:.1f}", *(f"{m[k]:.4f}" if k in m else "-" for k in ("cos_mean", "cos_min", "top10_overlap", "recall@1", "ref_recall@1")), gate)
    console.print(table)
    if not result.passed:
        for r in result.results:
            if not r.passed:
                console.print(f"[bold red]parity gate failed[/] {r.artifact}: {'; '.join(r.failures)}")
        raise typer.Exit(1)


def register(convert_app: typer.Typer, root_app: typer.Typer) -> None:
    convert_app.command("embedder")(convert_embedder)
    root_app.add_typer(embedder_app, name="embedder")
