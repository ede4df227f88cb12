"""What the detector's scenes are pasted on, chosen so that no unlabelled product teaches "product = background".

A background photo that shows products sharply (a shop shelf) would be a negative
example of exactly what the detector must find: every product in it is unlabelled.
So three kinds of background, each used on its own terms:

- ``photos``: photos with no products in them (``--backgrounds``; by default the
  project's scene photos, ``scene_photos/coco8`` and ``coral``): used as they are
  (a random crop, flipped at times, lightly blurred at times);
- ``shelves``: real shop photos full of products (a Grocery catalog's train photos,
  a shop catalog's ``role=photo`` rows). They carry the shop's colours, light and
  clutter, but are *masked* before use: cut into a grid of tiles that are shuffled
  and flipped, then blurred, so no whole product survives (a tile cuts through
  products, the blur removes their print and outline);
- procedural shelves (``embedder.synthesis.procedural_shelf``): bands of shop
  colours, never a product.

Each scene draws one kind at random among those available (``KIND_WEIGHTS``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageFilter

from shoplens.converters.embedder.synthesis import procedural_shelf
from shoplens.sdk.images import load_rgb

#: how often each kind is drawn when it is available (renormalised over the available kinds)
KIND_WEIGHTS = {"photo": 0.4, "shelf": 0.35, "procedural": 0.25}
#: shelf photos are cut into between this many tiles per side (then shuffled and blurred)
SHELF_TILES = (4, 8)
#: Gaussian blur radius of a masked shelf, as a share of the scene's short side
SHELF_BLUR = (0.01, 0.025)


@lru_cache(maxsize=256)
def _photo(path: str, side: int) -> Image.Image:
    """A background photo decoded at about ``side`` pixels (JPEG draft scale: big photos stay cheap)."""
    im = Image.fromarray(load_rgb(path, target_side=side))
    scale = side / min(im.size)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR) if scale < 1 else im


def _crop(im: Image.Image, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A random crop of ``im`` with the scene's aspect (40-100 % of the largest such crop), resized to ``size``."""
    w, h = size
    fit = min(im.width / w, im.height / h) * rng.uniform(0.4, 1.0)
    cw, ch = max(1, int(w * fit)), max(1, int(h * fit))
    x0, y0 = rng.randint(0, im.width - cw), rng.randint(0, im.height - ch)
    out = im.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BILINEAR)
    return out.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def mask_shelf(im: Image.Image, rng: random.Random) -> Image.Image:
    """A shelf photo with no whole product left: tiles shuffled and flipped, then blurred."""
    w, h = im.size
    n = rng.randint(*SHELF_TILES)
    xs = [round(i * w / n) for i in range(n + 1)]
    ys = [round(i * h / n) for i in range(n + 1)]
    cells = [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(n) for i in range(n)]
    tiles = [im.crop(c) for c in cells]
    rng.shuffle(tiles)
    out = Image.new("RGB", im.size)
    for cell, tile in zip(cells, tiles):
        if rng.random() < 0.5:
            tile = tile.transpose(Image.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            tile = tile.transpose(Image.FLIP_TOP_BOTTOM)
        out.paste(tile.resize((cell[2] - cell[0], cell[3] - cell[1]), Image.BILINEAR), cell[:2])
    return out.filter(ImageFilter.GaussianBlur(min(w, h) * rng.uniform(*SHELF_BLUR)))


@dataclass
class BackgroundPool:
    """Background sources for the scenes (see the module docstring for why three kinds)."""

    photos: list[Path] = field(default_factory=list)  # product-free photos, used as they are
    shelves: list[Path] = field(default_factory=list)  # shop photos full of products, masked before use
    procedural: bool = True

    def kinds(self) -> dict[str, float]:
        """The kinds this pool can draw, with their weights."""
        have = {"photo": bool(self.photos), "shelf": bool(self.shelves), "procedural": self.procedural}
        kinds = {k: w for k, w in KIND_WEIGHTS.items() if have[k]}
        if not kinds:
            raise ValueError("no backgrounds: give product-free photos or shelf photos, or allow procedural shelves")
        return kinds

    def draw(self, size: tuple[int, int], rng: random.Random) -> Image.Image:
        """One RGB background of ``size`` (width, height)."""
        kinds = self.kinds()
        kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
        if kind == "procedural":
            return procedural_shelf(size[0], rng, size[1])
        paths = self.photos if kind == "photo" else self.shelves
        im = _crop(_photo(str(paths[rng.randrange(len(paths))]), 2 * max(size)), size, rng)
        if kind == "shelf":
            return mask_shelf(im, rng)
        return im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5))) if rng.random() < 0.3 else im

    def describe(self) -> dict[str, object]:
        """What the dataset's ``scenes.json`` records about its backgrounds."""
        return {"photos": [str(p) for p in self.photos], "shelf_photos": len(self.shelves), "procedural": self.procedural,
                "weights": self.kinds()}
