"""Catalog data for the embedder: the Grocery Store layout, image loading (the SDK's decoder) and consumer-photo augmentation.

A catalog here is a folder with ``classes.csv`` (one row per product, with an
iconic image path) and split files (``train.txt``/``val.txt``: ``path, product_id,
coarse_id``). That is the Grocery Store dataset's layout (Klasson et al.), the
demo catalog; a shop exporting the same two files can fit and train on its own.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from shoplens.sdk.images import load_rgb
from shoplens.sdk.tensors import resize_pil

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class Sample:
    path: Path
    product: int
    kind: str  # "photo" or "iconic"


@dataclass
class Catalog:
    """Products (id -> name), their iconic images, and labelled photo splits."""

    root: Path
    names: dict[int, str]
    iconic: dict[int, Path]

    def split(self, name: str) -> list[Sample]:
        """Photos of a split (``train``, ``val``, ``test``, or a label file path), labelled by product id."""
        f = Path(name) if name.endswith(".txt") else self.root / f"{name}.txt"
        if not f.is_file():
            raise FileNotFoundError(f"catalog split {f} not found")
        out: list[Sample] = []
        for line in f.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2 and parts[0]:
                out.append(Sample(self.root / parts[0], int(parts[1]), "photo"))
        return out

    def iconic_samples(self, products: set[int] | None = None) -> list[Sample]:
        return [Sample(p, pid, "iconic") for pid, p in sorted(self.iconic.items()) if products is None or pid in products]


def load_catalog(root: str | os.PathLike[str]) -> Catalog:
    """Read ``classes.csv`` (Grocery Store columns: name, id, coarse name, coarse id, iconic path, ...)."""
    root = Path(root)
    f = root / "classes.csv"
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: a catalog folder needs classes.csv (see docs/embedder.md)")
    names: dict[int, str] = {}
    iconic: dict[int, Path] = {}
    with f.open(newline="") as fh:
        rows = csv.reader(fh)
        next(rows, None)
        for row in rows:
            if len(row) < 5:
                continue
            pid = int(row[1])
            names[pid] = row[0]
            iconic[pid] = root / row[4].lstrip("/")
    return Catalog(root, names, iconic)


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
