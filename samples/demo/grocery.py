"""The Grocery Store dataset as the demo's catalog (products, iconic images, train photos) and queries (val photos).

The benchmarks that measure the demo's flow (benchmarks/catalog_import.py, device_flow.py) use
these too, so they measure the catalog the demo indexes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console()


@dataclass
class DemoProduct:
    product_id: str
    category: str
    iconic: Path


@dataclass
class DemoData:
    root: Path
    products: list[DemoProduct]
    train: list[tuple[Path, str]]
    val: list[tuple[Path, str]]


def load_grocery(dataset_root: Path, products: int | None = None) -> DemoData:
    """Products from classes.csv; photos from train.txt / val.txt (``path, fine_id, coarse_id``).

    ``products``: keep only the first N products (and their photos), for a quick look.
    """
    root = dataset_root / "dataset" if (dataset_root / "dataset").is_dir() else dataset_root
    rows = list(csv.DictReader((root / "classes.csv").open(encoding="utf-8")))[:products]
    names = {int(r["Class ID (int)"]): r["Class Name (str)"] for r in rows}
    items = [DemoProduct(r["Class Name (str)"], r["Coarse Class Name (str)"], root / r["Iconic Image Path (str)"].lstrip("/")) for r in rows]

    def split(name: str) -> list[tuple[Path, str]]:
        out = []
        for line in (root / name).read_text().splitlines():
            if line.strip():
                path, fine, _ = (x.strip() for x in line.split(","))
                if int(fine) in names:
                    out.append((root / path, names[int(fine)]))
        return out

    return DemoData(root, items, split("train.txt"), split("val.txt"))


def catalog_entries(data: DemoData) -> list[Any]:
    from shoplens.sdk.catalog import CatalogEntry

    category = {p.product_id: p.category for p in data.products}
    entries = [CatalogEntry(p.product_id, str(p.iconic), title=p.product_id, category=p.category, attributes={"kind": "iconic"}) for p in data.products]
    entries += [CatalogEntry(pid, str(path), title=pid, category=category[pid], attributes={"kind": "shelf_photo"}) for path, pid in data.train]
    return entries


def reference_embedder(workdir: Path) -> Path:
    """No shipped embedder bundle: fall back to the off-the-shelf ImageNet MobileNetV1 (a real, weaker model)."""
    from shoplens.resources import find_weights
    from shoplens.sdk.wrap import wrap_tflite_embedder

    name = "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
    model = find_weights(name).require(hint="No embedder bundle in the bundle folder and no reference model: run `shoplens convert embedder` first.")
    out = workdir / "reference-embedder"
    if not (out / "manifest.json").is_file():
        wrap_tflite_embedder(model, out, name="mobilenet-v1-imagenet", link=True)
    console.print("[yellow]no embedder bundle found: using the ImageNet MobileNetV1 reference embedder instead[/]")
    return out
