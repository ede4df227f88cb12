"""``shoplens embedder adapt``: a bundle adapted to a shop's catalog, from catalog images alone.

Adapt (``adapt.py``), then convert through the same converter and parity gate as
``shoplens convert embedder``, and put the adapted checkpoint in the bundle so the
bundle can be adapted again when the catalog grows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import shutil
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console()

#: what the shipped embedder bundle carries: weight-only int8 TFLite and int8 CoreML
BUNDLE_PRECISIONS = "tflite:w8,coreml:int8"


def _source_checkpoint(source: Path) -> Path:
    from shoplens.converters.embedder.adapt import BUNDLE_CHECKPOINT

    if source.is_dir():
        ckpt = source / BUNDLE_CHECKPOINT
        if not ckpt.is_file():
            raise typer.BadParameter(
                f"{source} carries no trainable checkpoint ({BUNDLE_CHECKPOINT}); pass the checkpoint it was converted from "
                "(a .pt of `shoplens embedder train`), or a bundle written by `shoplens embedder adapt`", param_hint="--from")
        return ckpt
    if not source.is_file():
        raise typer.BadParameter(f"{source}: no such bundle folder or checkpoint", param_hint="--from")
    return source


def _default_work(out: Path) -> Path:
    from shoplens.settings import get_settings

    tag = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12]
    return get_settings().cache_dir / "embedder" / "adapt" / f"{out.name}-{tag}"


def adapt_cmd(
    source: Path = typer.Option(..., "--from", help="The bundle to adapt (a folder with embedder.pt) or an embedder checkpoint (.pt)."),
    catalog: Path = typer.Option(..., help="The shop's catalog: catalog.csv / .jsonl / folder, as `shoplens index` reads it (role=catalog rows are used)."),
    out: Path = typer.Option(..., help="Bundle folder to write (manifest.json, TFLite, CoreML, parity report, embedder.pt)."),
    backgrounds: Optional[Path] = typer.Option(None, help="Folder of unlabelled photos of the shop (aisles, shelves): scene backgrounds for the synthesised views (default: procedural shelves)."),
    views: int = typer.Option(24, min=1, help="Synthesised shopper views per product."),
    epochs: int = typer.Option(6, min=1, help="Epochs over the synthesised views."),
    distill_weight: float = typer.Option(4.0, min=0.0, help="How strongly each view stays where the base model put it (keeps the products it was trained on)."),
    trainable_units: int = typer.Option(1, min=0, help="Trainable last units of the trunk (0: head only)."),
    parity_catalog: Optional[Path] = typer.Option(None, help="Labelled photos for the parity gate (default: --catalog when it has role=val rows, else the Grocery Store val photos)."),
    work: Optional[Path] = typer.Option(None, help="Work folder: the feature cache, adapt.state.pt (a rerun resumes), the adapted checkpoint (default: under the cache)."),
    name: Optional[str] = typer.Option(None, help="Bundle name (default: the --out folder name)."),
    seed: int = typer.Option(0),
    threads: int = typer.Option(2, min=1),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps (tests)."),
) -> None:
    """Adapt an embedder bundle to a catalog from its catalog images alone (synthesised shopper views); seeded, resumable.

    Writes a complete bundle with a new model id; serve it beside the current one with
    `shoplens reindex --catalog CATALOG --bundle OUT`. Measured so far, the recipe does not raise
    new-product recall and costs the products the base model was trained on: benchmark a bundle
    before serving it (docs/embedder.md, "Catalog-only adaptation").
    """
    from shoplens.converters.common.errors import ConversionError
    from shoplens.converters.embedder.adapt import BUNDLE_CHECKPOINT, AdaptConfig, AdaptError, adapt
    from shoplens.converters.embedder.cli import _catalog_dir, _catalog_exit
    from shoplens.converters.embedder.convert import EmbedderConvertOptions, ParityData, convert_embedder
    from shoplens.converters.embedder.data import CatalogDataError, load_catalog

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ckpt = _source_checkpoint(source)
    if out.resolve() == (source.resolve() if source.is_dir() else source.parent.resolve()):
        raise typer.BadParameter("write the adapted bundle to a new folder, not over the one it adapts", param_hint="--out")
    try:
        parity_root = parity_catalog or (catalog if load_catalog(catalog).has_split("val") else _catalog_dir(None))
        parity = ParityData.from_catalog(parity_root)
        cfg = AdaptConfig(source=ckpt, catalog=catalog, work=work or _default_work(out), backgrounds=backgrounds, views=views, epochs=epochs,
                          distill_weight=distill_weight, trainable_units=trainable_units, seed=seed, threads=threads, max_steps=max_steps)
        result = adapt(cfg)
    except (CatalogDataError, AdaptError) as exc:
        raise _catalog_exit(exc) from None
    try:
        converted = convert_embedder(EmbedderConvertOptions(checkpoint=result.checkpoint, out=out, parity=parity, targets=["tflite", "coreml"],
                                                            precisions=BUNDLE_PRECISIONS.split(","), name=name, threads=threads))
    except ConversionError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    shutil.copyfile(result.checkpoint, out / BUNDLE_CHECKPOINT)
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    model_id = converted.manifest.embedder.model_id if converted.manifest.embedder else ""
    console.print(json.dumps({"bundle": str(out), "model_id": model_id, "products": result.products, "catalog_images": result.images,
                              "views": result.views, "losses": [round(x, 4) for x in result.losses], "adapt_seconds": round(result.seconds, 1),
                              "peak_rss_mb": round(peak_mb), "parity_passed": converted.passed}, indent=2))
    if not converted.passed:
        for r in converted.results:
            if not r.passed:
                console.print(f"[bold red]parity gate failed[/] {r.artifact}: {'; '.join(r.failures)}")
        raise typer.Exit(1)
    console.print(f"next: shoplens reindex --catalog {catalog} --bundle {out}   (serves {model_id} beside the current model)")
