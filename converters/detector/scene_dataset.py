"""The detector's training data: a YOLO dataset folder of synthetic scenes built from a catalog.

Layout (what ultralytics reads)::

    OUT/images/{train,val}/000000.jpg   OUT/labels/{train,val}/000000.txt   OUT/data.yaml   OUT/scenes.json

One class, ``product``. The catalog is read as ``shoplens index`` and the embedder
trainer read it (``embedder.data.load_catalog``: a shop's CSV / JSONL / folder, or
the Grocery Store layout): its catalog images are the products; a shop catalog's
``role=photo`` rows and a Grocery catalog's train photos are shop photos, used only
as masked shelf backgrounds (``backgrounds``); ``role=val`` rows are not used. Every
image is decoded before any scene is written and every bad row is reported at once
(``embedder.catalog_check``).

Resumable and seeded: scene ``i`` of a split is drawn from its own generator
(``seed``, split, ``i``), so a rerun writes exactly the scenes that are missing
(a scene's label file is written last, atomically: a scene with a label file is
complete) and the folder is the same whatever was interrupted. ``scenes.json``
records what the scenes were made from; a rerun with another catalog, seed, size
or backgrounds refuses to mix them in.

Val scenes are built from held-out products (``VAL_PRODUCT_SHARE`` of them, when
the catalog has at least ``MIN_PRODUCTS_FOR_HOLDOUT``), so the val mAP measures
finding products the detector never saw, which is what a growing catalog needs.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from shoplens.converters.detector.backgrounds import BackgroundPool
from shoplens.converters.detector.scenes import compose_scene
from shoplens.converters.embedder.catalog_check import check_run_data
from shoplens.converters.embedder.data import IMAGE_SUFFIXES, Catalog, Sample, is_grocery_layout, load_catalog
from shoplens.converters.embedder.synthesis import cut_out
from shoplens.sdk.images import load_rgb

CLASS_NAME = "product"
VAL_PRODUCT_SHARE = 0.1
MIN_PRODUCTS_FOR_HOLDOUT = 10
#: share of scenes with one product (a shopper's close-up: the commonest query photo)
SINGLE_PRODUCT_SHARE = 0.3
#: scene shapes (width, height) as shares of imgsz: square, phone portrait, phone landscape
ASPECTS = ((1.0, 1.0), (0.75, 1.0), (1.0, 0.75))
#: what must match for a rerun to add to an existing scene folder
_SPEC_KEYS = ("catalog_sha256", "seed", "imgsz", "max_products", "backgrounds", "val_products", "version")
SCENES_VERSION = 1


class SceneDatasetError(ValueError):
    """A scene folder that cannot be resumed with these options (made from other data or settings)."""


@dataclass
class SceneOptions:
    """How many scenes, how large, from what."""

    catalog: Path
    out: Path
    imgsz: int = 320
    train: int = 2000
    val: int = 200
    max_products: int = 8
    seed: int = 0
    backgrounds: list[Path] = field(default_factory=list)  # product-free photos (files or folders)
    shelf_photos: bool = True  # the catalog's shop photos as masked shelves


@dataclass
class SceneDataset:
    """A written scene folder."""

    root: Path
    data_yaml: Path
    counts: dict[str, int]  # scenes per split
    boxes: dict[str, int]  # boxes per split
    written: int  # scenes written by this call (the rest were already there)
    products: dict[str, int]  # products per split


def _images_under(paths: list[Path]) -> list[Path]:
    """Image files of ``paths`` (files as given, folders searched recursively, sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"background path not found: {p}")
    return out


def default_backgrounds() -> list[Path]:
    """The project's product-free scene photos (coco8, coral), when they are on this machine."""
    from shoplens.resources import find_dataset

    found = find_dataset("scene_photos").path
    return [d for d in ((found / "coco8" / "images"), (found / "coral")) if d.is_dir()] if found else []


def shop_photos(catalog: Catalog) -> list[Sample]:
    """The catalog's labelled shop photos (Grocery train split, a shop catalog's role=photo rows): shelf backgrounds."""
    return catalog.split("train") if catalog.has_split("train") else []


def split_products(catalog: Catalog, seed: int) -> dict[str, list[int]]:
    """Train and val products: val holds out a seeded share when the catalog is large enough, else shares all."""
    ids = sorted(catalog.images)
    n_val = round(len(ids) * VAL_PRODUCT_SHARE) if len(ids) >= MIN_PRODUCTS_FOR_HOLDOUT else 0
    val = sorted(random.Random(f"{seed}/val-products").sample(ids, n_val)) if n_val else ids
    train = [i for i in ids if i not in set(val)] if n_val else ids
    return {"train": train, "val": val}


@lru_cache(maxsize=1024)
def _cutout(path: str, imgsz: int) -> Image.Image:
    """A catalog image's cut-out (``cut_out``: matting by its background colour), at most ``imgsz`` per side."""
    im = Image.fromarray(load_rgb(path, target_side=imgsz))
    if max(im.size) > imgsz:
        scale = imgsz / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    return cut_out(im)


def _scene_items(catalog: Catalog, products: list[int], max_products: int, imgsz: int, rng: random.Random) -> list[Image.Image]:
    """The cut-outs of one scene: one product a third of the time, else 2..max; a product, then one of its images."""
    n = 1 if max_products == 1 or rng.random() < SINGLE_PRODUCT_SHARE else rng.randint(2, max_products)
    items = []
    for _ in range(n):
        samples = catalog.images[products[rng.randrange(len(products))]]
        items.append(_cutout(str(samples[rng.randrange(len(samples))].path), imgsz))
    return items


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_data_yaml(root: Path) -> Path:
    """ultralytics' data file: absolute root, the two splits, one class (no ``download:`` key: nothing is fetched)."""
    path = root / "data.yaml"
    _write_atomic(path, f"path: {json.dumps(str(root.resolve()))}\ntrain: images/train\nval: images/val\nnames:\n  0: {CLASS_NAME}\n")
    return path


def _check_spec(root: Path, spec: dict[str, Any]) -> None:
    """Refuse to add scenes to a folder made from other data or settings (they would mix silently)."""
    f = root / "scenes.json"
    if not f.is_file():
        return
    old = json.loads(f.read_text())
    diff = [k for k in _SPEC_KEYS if old.get(k) != spec.get(k)]
    if diff:
        raise SceneDatasetError(f"{root} holds scenes made with other {', '.join(diff)}; "
                                "write to a new folder (or delete it, or pass --fresh) to make new scenes")


def build_scene_dataset(opts: SceneOptions, *, progress: bool = True) -> SceneDataset:
    """Check the catalog, then write every missing scene of both splits; returns what the folder holds.

    Raises ``CatalogDataError`` naming every bad catalog row, ``SceneDatasetError`` for a folder
    made from other data; nothing is written in either case.
    """
    catalog = load_catalog(opts.catalog)
    shelves = shop_photos(catalog) if opts.shelf_photos else []
    checked = check_run_data(catalog, shelves, decode_side=opts.imgsz)
    products = split_products(catalog, opts.seed)
    pool = BackgroundPool(_images_under(list(opts.backgrounds)), [s.path for s in shelves])
    spec = {
        "version": SCENES_VERSION,
        "catalog": str(opts.catalog),
        "catalog_format": "grocery" if is_grocery_layout(opts.catalog) else checked.format,
        "catalog_sha256": checked.sha256,
        "seed": opts.seed,
        "imgsz": opts.imgsz,
        "max_products": opts.max_products,
        "backgrounds": pool.describe(),
        "val_products": [catalog.names[i] for i in products["val"]] if products["val"] != products["train"] else "all",
        "class_names": [CLASS_NAME],
    }
    root = opts.out
    _check_spec(root, spec)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    _write_atomic(root / "scenes.json", json.dumps({**spec, "scenes": {"train": opts.train, "val": opts.val}}, indent=2))
    written = 0
    for split, count in (("train", opts.train), ("val", opts.val)):
        todo = [i for i in range(count) if not (root / "labels" / split / f"{i:06d}.txt").is_file()]
        for i in tqdm(todo, desc=f"{split} scenes", unit="scene", initial=count - len(todo), total=count, disable=not progress):
            rng = random.Random(f"{opts.seed}/{split}/{i}")
            w, h = (round(opts.imgsz * a) for a in ASPECTS[rng.randrange(len(ASPECTS))])
            scene = compose_scene(pool.draw((w, h), rng), _scene_items(catalog, products[split], opts.max_products, opts.imgsz, rng), rng)
            Image.fromarray(scene.image).save(root / "images" / split / f"{i:06d}.jpg", quality=92)
            _write_atomic(root / "labels" / split / f"{i:06d}.txt", "".join(f"{line}\n" for line in scene.yolo_lines()))
            written += 1
    labels = {split: sorted((root / "labels" / split).glob("*.txt")) for split in ("train", "val")}
    counts = {split: len(files) for split, files in labels.items()}
    boxes = {split: sum(len(f.read_text().splitlines()) for f in files) for split, files in labels.items()}
    return SceneDataset(root, write_data_yaml(root), counts, boxes, written, {k: len(v) for k, v in products.items()})


__all__ = ["CLASS_NAME", "SceneDataset", "SceneDatasetError", "SceneOptions", "build_scene_dataset", "default_backgrounds"]
