"""One training scene for the product detector: catalog cut-outs pasted on a background, with their boxes.

Why synthetic scenes: a shop has product images (studio shots) but no photos with
boxes drawn on them. Pasting the cut-outs (``embedder.synthesis.cut_out``) onto a
background gives scenes whose boxes are known exactly, because the scene is
composed here from alpha layers:

- each product is scaled, relit, flipped, perspective-warped, rotated and maybe
  defocused, then placed (partly over the image border at times, partly over the
  products placed before it: other products are the commonest occluder on a shelf);
- a hand may cover an edge (``embedder.synthesis.hand_layer``);
- a product's *visible alpha* is its alpha times what every later layer leaves
  uncovered; its box is the tight box of the pixels where that is at least
  ``VISIBLE_ALPHA`` (so a box is the visible extent after occlusion and after the
  image border crops it), and a product with less than ``MIN_VISIBLE`` of its own
  area visible gets no box (mostly hidden: not something a shopper points at);
- then the shop camera (``embedder.synthesis.shop_camera``: light, noise, blur,
  JPEG) changes pixels, never geometry, so the boxes stay true.

Everything random comes from the ``random.Random`` passed in: a scene is the same
picture in every run, which is what makes the scene folder resumable.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from shoplens.converters.embedder.synthesis import hand_layer, perspective, shop_camera

#: a pixel is part of a product where its visible alpha is at least this
VISIBLE_ALPHA = 0.5
#: a product showing less than this share of its own (unoccluded, uncropped) area gets no box
MIN_VISIBLE = 0.3
#: a box narrower or lower than this many pixels is dropped (nothing to learn from it)
MIN_BOX_PX = 3
#: placements tried per product so that no earlier product drops under this share visible
KEEP_VISIBLE = 0.5
PLACEMENT_TRIES = 6


@dataclass
class Scene:
    """A composed scene: the image, a box per labelled product, and what the boxes were measured on."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 in pixels (x1, y1 exclusive), one per labelled product
    labelled: list[int]  # index into the ``items`` given to ``compose_scene`` of each box's product
    visible: list[np.ndarray] = field(repr=False)  # per box: the product's visible-alpha mask (>= VISIBLE_ALPHA)
    visible_px: list[int] = field(default_factory=list)  # per pasted product: pixels of it left visible in the image
    own_px: list[int] = field(default_factory=list)  # per pasted product: its own area in pixels (unoccluded, uncropped)

    @property
    def placed(self) -> int:
        """Products pasted: labelled ones plus those dropped as mostly hidden."""
        return len(self.own_px)

    def yolo_lines(self) -> list[str]:
        """The boxes as YOLO label lines (class 0, centre x/y and width/height as 0-1 of the image)."""
        h, w = self.image.shape[:2]
        return [f"0 {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
                for x0, y0, x1, y1 in self.boxes]


@dataclass
class _Layer:
    """One pasted RGBA layer on the canvas grid (a product or the hand)."""

    rgb: np.ndarray  # H x W x 3 float32, the layer's colours where it covers the canvas
    alpha: np.ndarray  # H x W float32 0-1
    own_area: int  # pixels of the layer's own image with alpha >= VISIBLE_ALPHA, before the border crops it


def _to_canvas(item: Image.Image, x0: int, y0: int, size: tuple[int, int]) -> _Layer:
    """``item`` (RGBA) placed with its top-left corner at (x0, y0) on a ``size`` canvas, cropped by the border."""
    w, h = size
    arr = np.asarray(item.convert("RGBA"), dtype=np.float32)
    own_area = int(np.count_nonzero(arr[..., 3] >= VISIBLE_ALPHA * 255))
    rgb = np.zeros((h, w, 3), np.float32)
    alpha = np.zeros((h, w), np.float32)
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(w, x0 + item.width), min(h, y0 + item.height)
    if cx1 > cx0 and cy1 > cy0:
        part = arr[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        rgb[cy0:cy1, cx0:cx1] = part[..., :3]
        alpha[cy0:cy1, cx0:cx1] = part[..., 3] / 255.0
    return _Layer(rgb, alpha, own_area)


def _share(vis: np.ndarray, own_area: int) -> float:
    """Share of a product's own area that is visible (visible alpha >= ``VISIBLE_ALPHA``)."""
    return float(np.count_nonzero(vis >= VISIBLE_ALPHA)) / own_area if own_area else 0.0


def _product_size(n: int, rng: random.Random) -> float:
    """Long side of a product as a share of the scene's short side: large when alone (a close-up,
    as most shopper photos are), smaller when many share the scene; log-uniform in between."""
    hi = min(0.95, 1.25 / math.sqrt(n))
    lo = max(0.1, 0.35 * hi)
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _transform(item: Image.Image, long_side: float, rng: random.Random, photometric: bool) -> Image.Image:
    """Scale, relight, flip, warp, rotate and maybe defocus one RGBA cut-out."""
    scale = long_side / max(item.size)
    item = item.resize((max(1, round(item.width * scale)), max(1, round(item.height * scale))), Image.BILINEAR)
    if photometric:  # the product's own light: shelves are lit unevenly
        rgb, a = item.convert("RGB"), item.getchannel("A")
        rgb = ImageEnhance.Brightness(rgb).enhance(rng.uniform(0.7, 1.3))
        rgb = ImageEnhance.Contrast(rgb).enhance(rng.uniform(0.8, 1.2))
        if rng.random() < 0.15:  # out of the focal plane (colours only: the outline stays the box)
            rgb = rgb.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
        item = rgb.convert("RGBA")
        item.putalpha(a)
    if rng.random() < 0.5:
        item = item.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        item = perspective(item, rng)
    if rng.random() < 0.5:
        item = item.rotate(rng.uniform(-30, 30), resample=Image.BILINEAR, expand=True)
    return item


def _place(item: Image.Image, size: tuple[int, int], rng: random.Random) -> tuple[int, int]:
    """Top-left corner for ``item``: its centre anywhere in the scene, now and then past the border."""
    w, h = size
    spread = (-0.15, 1.15) if rng.random() < 0.2 else (0.05, 0.95)
    cx, cy = rng.uniform(*spread) * w, rng.uniform(*spread) * h
    return round(cx - item.width / 2), round(cy - item.height / 2)


def compose_scene(background: Image.Image, items: Sequence[Image.Image], rng: random.Random, *,
                  hand_p: float = 0.3, photometric: bool = True) -> Scene:
    """Paste ``items`` (RGBA cut-outs, in paste order: later ones cover earlier ones) on ``background``.

    ``photometric=False`` leaves every pixel colour as pasted (no relighting, defocus or
    camera), so a test can find each product in the image by its colour; the geometry
    (scale, warp, rotation, placement, occlusion, the hand) is the same either way.
    """
    size = background.size
    layers: list[_Layer] = []
    vis: list[np.ndarray] = []  # per product: its alpha times what the layers after it leave uncovered
    for item in items:
        item = _transform(item, _product_size(len(items), rng) * min(size), rng, photometric)
        for _ in range(PLACEMENT_TRIES):  # an earlier product may be covered in part, rarely all but hidden
            layer = _to_canvas(item, *_place(item, size, rng), size)
            covered = [v * (1.0 - layer.alpha) for v in vis]
            if all(_share(v, lay.own_area) >= KEEP_VISIBLE for v, lay in zip(covered, layers)):
                break
        layers.append(layer)
        vis = [*covered, layer.alpha.copy()]
    products = len(layers)
    if rng.random() < hand_p:
        hand = _to_canvas(hand_layer(size, rng), 0, 0, size)
        layers.append(hand)
        vis = [v * (1.0 - hand.alpha) for v in vis]

    canvas = np.asarray(background.convert("RGB"), dtype=np.float32).copy()
    for layer in layers:
        a = layer.alpha[..., None]
        canvas = canvas * (1.0 - a) + layer.rgb * a
    boxes: list[tuple[int, int, int, int]] = []
    labelled: list[int] = []
    visible: list[np.ndarray] = []
    masks = [v >= VISIBLE_ALPHA for v in vis]
    for i, mask in enumerate(masks):
        if _share(vis[i], layers[i].own_area) < MIN_VISIBLE:
            continue
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        if box[2] - box[0] < MIN_BOX_PX or box[3] - box[1] < MIN_BOX_PX:
            continue
        boxes.append(box)
        labelled.append(i)
        visible.append(mask)
    image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    pixels = shop_camera(image, rng) if photometric else np.asarray(image, dtype=np.uint8)
    return Scene(pixels, boxes, labelled, visible, [int(np.count_nonzero(m)) for m in masks], [lay.own_area for lay in layers[:products]])
