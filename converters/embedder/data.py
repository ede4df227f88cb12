"""Catalog data for the embedder: the trainer's ``Catalog``, the Grocery Store reader, image loading (the SDK's decoder) and consumer-photo augmentation.

The trainer reads two kinds of catalog (``load_catalog``):

- a shop catalog, in the formats ``shoplens index`` reads (CSV, JSONL, a folder
  of ``<product_id>/`` image folders; ``shop_catalog``), where labelled shopper
  photos are rows with ``role`` ``photo`` (trained on) or ``val`` (evaluation);
- the Grocery Store layout (Klasson et al.), the demo catalog: a folder with
  ``classes.csv`` (one row per product, with its iconic image) and split files
  (``train.txt``/``val.txt``: ``path, product_id, coarse_id``).

Both become one ``Catalog``: int product ids (class indices), one or several
catalog images per product, and labelled photo splits.
"""

from __future__ import annotations

import csv
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from shoplens.sdk.images import load_rgb
from shoplens.sdk.tensors import resize_pil

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
MAX_LISTED_PROBLEMS = 20  # a catalog error lists this many bad rows, then counts the rest


class CatalogDataError(ValueError):
    """A training catalog that cannot be used (bad rows, unreadable images), found before any work starts.

    The message names every bad row's file and line; the CLI exits 2 with it.
    """


def raise_problems(problems: list[str], what: str = "bad catalog rows") -> None:
    """One ``CatalogDataError`` listing every problem (so a shop fixes its file in one pass), if there are any."""
    if not problems:
        return
    shown = problems[:MAX_LISTED_PROBLEMS]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    raise CatalogDataError(f"{len(problems)} {what}:\n  " + "\n  ".join(shown) + more)


@dataclass(frozen=True)
class Sample:
    path: Path
    product: int
    kind: str  # "photo", or "iconic": a catalog image (Grocery's iconic image, a shop catalog's role=catalog row)
    origin: str = field(default="", compare=False)  # the row it came from ("catalog.csv line 4"), for error reports


def is_grocery_layout(path: str | os.PathLike[str]) -> bool:
    """A folder with ``classes.csv``: the Grocery Store layout (anything else is read as a shop catalog)."""
    return (Path(path) / "classes.csv").is_file()


@dataclass
class Catalog:
    """Products (int id -> name), their catalog images (one or several each), and labelled photo splits.

    Ids are ints inside the trainer (class indices, held-out sets); ``names`` maps
    them back to the catalog's product ids (Grocery: the class name).
    ``photos``: a shop catalog's labelled photos by split (``train``: role photo,
    ``val``: role val); ``None`` for the Grocery layout, whose splits are files under ``root``.
    """

    root: Path
    names: dict[int, str]
    images: dict[int, list[Sample]]
    categories: dict[int, str] = field(default_factory=dict)
    photos: dict[str, list[Sample]] | None = None
    source: Path | None = None  # the catalog file or folder that was read
    format: str = "grocery"  # grocery, csv, jsonl or folder

    def split(self, name: str) -> list[Sample]:
        """Photos of a split (``train``, ``val``, ``test``, or a Grocery label file path), labelled by product id."""
        if self.photos is not None:
            if name not in self.photos:
                raise CatalogDataError(
                    f"{self.source}: a shop catalog's labelled photos are its rows with role photo (split 'train') and "
                    f"role val (split 'val'); there is no split {name!r} (label files are for the Grocery layout)"
                )
            return list(self.photos[name])
        f = Path(name) if name.endswith(".txt") else self.root / f"{name}.txt"
        if not f.is_file():
            raise FileNotFoundError(f"catalog split {f} not found")
        out: list[Sample] = []
        for i, line in enumerate(f.read_text().splitlines(), start=1):
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2 and parts[0]:
                out.append(Sample(self.root / parts[0], int(parts[1]), "photo", f"{f} line {i}"))
        return out

    def has_split(self, name: str) -> bool:
        """Whether the catalog has any photo in split ``name`` (a shop catalog without role=val rows has no val)."""
        if self.photos is not None:
            return bool(self.photos.get(name))
        return (self.root / f"{name}.txt").is_file() and bool(self.split(name))

    def iconic_samples(self, products: set[int] | None = None) -> list[Sample]:
        """Every catalog image, by product id then catalog order (several per product in a shop catalog)."""
        return [s for pid in sorted(self.images) if products is None or pid in products for s in self.images[pid]]

    def views_per_image(self, product: int, views: int) -> int:
        """Augmented views of each of ``product``'s catalog images: ``views`` per product, shared among its images.

        Why per product: the recipe was tuned with one iconic image x 16 views per
        product; a product with 4 catalog images gets 4 views of each, so the
        balance of catalog and photo samples (and of products) stays the tuned one.
        """
        return max(1, math.ceil(views / len(self.images[product])))


def load_catalog(source: str | os.PathLike[str]) -> Catalog:
    """A Grocery Store folder (``classes.csv`` + split files) or a shop catalog (``shoplens index``'s formats).

    A bad shop catalog row raises ``CatalogDataError`` naming it (``shop_catalog``).
    """
    if is_grocery_layout(source):
        return load_grocery(source)
    from shoplens.converters.embedder.shop_catalog import load_shop_catalog  # it builds on this module's Catalog

    return load_shop_catalog(source)


def load_grocery(root: str | os.PathLike[str]) -> Catalog:
    """Read ``classes.csv`` (Grocery Store columns: name, id, coarse name, coarse id, iconic path, ...)."""
    root = Path(root)
    f = root / "classes.csv"
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: a catalog folder needs classes.csv (see docs/embedder.md)")
    names: dict[int, str] = {}
    images: dict[int, list[Sample]] = {}
    categories: dict[int, str] = {}
    with f.open(newline="") as fh:
        rows = csv.reader(fh)
        next(rows, None)
        for i, row in enumerate(rows, start=2):
            if len(row) < 5:
                continue
            pid = int(row[1])
            names[pid] = row[0]
            categories[pid] = row[2]
            images[pid] = [Sample(root / row[4].lstrip("/"), pid, "iconic", f"{f} line {i}")]
    return Catalog(root, names, images, categories, source=root)


def holdout_products(catalog: Catalog, n: int, seed: int = 0) -> set[int]:
    """A seeded set of ``n`` products kept out of training, to measure new-product retrieval."""
    ids = sorted(catalog.names)
    rng = random.Random(seed)
    return set(rng.sample(ids, n)) if n > 0 else set()


def list_images(folder: str | os.PathLike[str], limit: int | None = None) -> list[Path]:
    """Images under a folder, sorted (calibration and fit-head inputs)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return files[:limit] if limit else files


def load_resized(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """The photo as the SDK decodes it (EXIF-upright RGB), stretched to ``size`` x ``size`` like the manifest's resize rule."""
    return resize_pil(load_rgb(path), size, size)


def open_upright(path: str | os.PathLike[str]) -> Image.Image:
    """The photo as the SDK decodes it, as a PIL image (the augmentation's input)."""
    return Image.fromarray(load_rgb(path))


def load_batch(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([load_resized(p, size) for p in paths]) if paths else np.zeros((0, size, size, 3), np.uint8)


def consumer_augment(im: Image.Image, size: int, rng: random.Random) -> np.ndarray:
    """Make a catalog or shelf image look like a phone crop: reframing, tilt, light, blur, JPEG-ish softness.

    A detector crop is loosely framed (scale/aspect jitter, off-centre), under
    shop lighting (brightness/contrast/colour), sometimes rotated or blurred;
    iconic images are clean studio shots, so without this the iconic and photo
    domains do not meet.
    """
    im = im.convert("RGB")
    w, h = im.size
    area = w * h * rng.uniform(0.35, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, round(np.sqrt(area * aspect))))
    ch = int(min(h, round(np.sqrt(area / aspect))))
    x0 = rng.randint(0, w - cw)
    y0 = rng.randint(0, h - ch)
    im = im.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        im = im.rotate(rng.uniform(-20, 20), resample=Image.BILINEAR, fillcolor=tuple(rng.randint(90, 200) for _ in range(3)))
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.65, 1.35))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.7, 1.3))
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.7, 1.3))
    if rng.random() < 0.25:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    im = im.resize((size, size), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float32)
    if rng.random() < 0.3:  # sensor noise
        arr = arr + np.random.default_rng(rng.randint(0, 2**31)).normal(0, rng.uniform(2, 8), arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)
