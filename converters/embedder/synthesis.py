"""Shopper-photo views synthesised from a catalog image: the studio -> shelf bridge of ``embedder adapt``.

A catalog image is a studio shot: the product centred on a plain (usually white)
background, evenly lit. A shopper's crop shows the same product among its
neighbours on a shelf, under shop light, tilted, blurred, partly behind a hand.
Training on the studio image alone pulls the product's proxy into the studio
domain (docs/embedder.md, "Catalog-only adaptation"), so each training view here
is a scene built from the catalog image:

1. matte: the product is separated from its background by the background's colour
   (estimated from the image border), with a soft edge;
2. scene: pasted, scaled and perspective-warped, onto a background (a real photo
   when the shop gives a folder of them, else a procedural shelf: bands of colour
   with other catalog products as neighbours), framed loosely as a detector crop is;
3. camera: shop light (brightness, contrast, colour cast), a hand over an edge,
   blur, sensor noise, JPEG softness.

Every random choice comes from the ``random.Random`` passed in, so a view is the
same picture in every run (the frozen-feature cache depends on that).

The detector's training scenes (``shoplens.converters.detector.scenes``) are built
from the same parts: ``cut_out``, ``perspective``, ``procedural_shelf``, ``hand_layer``
and ``shop_camera``; one definition each, so the two trainers see the same shop.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

__all__ = ["SceneSource", "cut_out", "hand_layer", "perspective", "procedural_shelf", "shop_camera", "synthesise_view"]


def cut_out(im: Image.Image, *, tolerance: float = 28.0, feather: float = 1.5) -> Image.Image:
    """RGBA of ``im`` with its plain background transparent (alpha from the distance to the border colour).

    A photo without a plain background (the border's colours vary) keeps full alpha: it is
    then pasted whole, which is still a reframed, relit view of it."""
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    h, w, _ = rgb.shape
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    bg = np.median(border, axis=0)
    if np.mean(np.linalg.norm(border - bg, axis=1) < tolerance) < 0.6:
        return im.convert("RGBA")
    dist = np.linalg.norm(rgb - bg, axis=2)
    alpha = np.clip((dist - tolerance * 0.5) / tolerance, 0.0, 1.0)
    mask = Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.MinFilter(5))
    mask = mask.filter(ImageFilter.GaussianBlur(feather))
    if np.asarray(mask).mean() < 255 * 0.03:  # nothing left: the "background" was the product
        return im.convert("RGBA")
    out = im.convert("RGBA")
    out.putalpha(mask)
    bbox = mask.point(lambda v: 255 if v > 24 else 0).getbbox()
    return out.crop(bbox) if bbox else out


@dataclass
class SceneSource:
    """What scenes are built from: background photos (may be empty) and neighbour cut-outs."""

    backgrounds: list[Image.Image]
    neighbours: list[Image.Image]  # RGBA cut-outs of other catalog products


def procedural_shelf(size: int, rng: random.Random, height: int | None = None) -> Image.Image:
    """Horizontal bands (shelf edges, back wall) in muted shop colours with a light gradient.

    ``size`` wide, ``height`` high (square when None). The detector's scenes use it too
    (``shoplens.converters.detector.scenes``): a shop-like background with no product in it."""
    width, height = size, size if height is None else height
    im = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(im)
    y = 0
    while y < height:
        band = rng.randint(height // 10, height // 2)
        base = [rng.randint(40, 220) for _ in range(3)]
        draw.rectangle((0, y, width, y + band), fill=tuple(base))
        if rng.random() < 0.6:  # a shelf lip
            lip = rng.randint(2, max(3, height // 30))
            draw.rectangle((0, y + band - lip, width, y + band), fill=tuple(rng.randint(150, 250) for _ in range(3)))
        y += band
    grad = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(0.9, 1.2), height, dtype=np.float32)[:, None, None]
    arr = np.clip(np.asarray(im, dtype=np.float32) * grad, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _background(src: SceneSource, size: int, rng: random.Random) -> Image.Image:
    if src.backgrounds and rng.random() < 0.7:
        bg = src.backgrounds[rng.randrange(len(src.backgrounds))]
        w, h = bg.size
        side = int(min(w, h) * rng.uniform(0.3, 1.0))
        x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
        bg = bg.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
        # out of focus behind the product, as a close-up crop is
        return bg.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 3.0)))
    return procedural_shelf(size, rng)


def perspective(im: Image.Image, rng: random.Random, strength: float = 0.12) -> Image.Image:
    """A mild perspective warp (the phone is rarely square to the shelf); an RGBA image's new corners are transparent."""
    w, h = im.size
    d = [rng.uniform(-strength, strength) for _ in range(8)]
    quad = (d[0] * w, d[1] * h, d[2] * w, h + d[3] * h, w + d[4] * w, h + d[5] * h, w + d[6] * w, d[7] * h)
    return im.transform((w, h), Image.QUAD, quad, resample=Image.BILINEAR)


def _paste(canvas: Image.Image, item: Image.Image, box_w: float, cx: float, cy: float, angle: float) -> None:
    w, h = item.size
    scale = box_w / max(w, h)
    item = item.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.BILINEAR)
    if angle:
        item = item.rotate(angle, resample=Image.BILINEAR, expand=True)
    canvas.paste(item, (int(cx - item.width / 2), int(cy - item.height / 2)), item)


def hand_layer(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """RGBA ``size`` layer, transparent but for a skin-toned blob over the left, right or bottom edge:
    a hand holding or reaching for the product. Its alpha is what it hides (the detector's
    scenes subtract it from the products' visible areas)."""
    width, height = size
    tone = rng.choice([(224, 172, 140), (198, 134, 102), (141, 85, 60), (90, 56, 38), (240, 200, 170)])
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    edge = rng.choice("lrb")
    r = int(width * rng.uniform(0.12, 0.25))
    if edge == "b":
        cx, cy = rng.randint(0, width), height + r // 3
    else:
        cx, cy = (-r // 3 if edge == "l" else width + r // 3), rng.randint(height // 3, height)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(*tone, 255))
    for _ in range(rng.randint(2, 4)):  # fingers
        fx, fy = cx + rng.randint(-r, r), cy + rng.randint(-r, r)
        fw = max(2, r // 4)
        draw.ellipse((fx - fw, fy - r, fx + fw, fy + r // 2), fill=(*tone, 255))
    return layer.filter(ImageFilter.GaussianBlur(2))


def _hand(canvas: Image.Image, rng: random.Random) -> None:
    """A hand over one edge of ``canvas`` (``hand_layer``), pasted in place."""
    layer = hand_layer(canvas.size, rng)
    canvas.paste(layer, (0, 0), layer)


def synthesise_view(product: Image.Image, size: int, rng: random.Random, src: SceneSource) -> np.ndarray:
    """One shopper-like ``size`` x ``size`` uint8 RGB view of ``product`` (an RGBA cut-out, see ``cut_out``)."""
    work = int(size * 1.6)  # composed larger, then cropped: the crop frames the product loosely
    canvas = _background(src, work, rng).convert("RGB")
    centre = work / 2
    box = work * rng.uniform(0.42, 0.62)
    if src.neighbours and rng.random() < 0.8:  # neighbours on the shelf, left and right, partly in frame
        for side in (-1, 1):
            if rng.random() < 0.75:
                n = src.neighbours[rng.randrange(len(src.neighbours))]
                _paste(canvas, n, box * rng.uniform(0.8, 1.1), centre + side * box * rng.uniform(0.85, 1.15), centre + rng.uniform(-0.1, 0.1) * box, 0.0)
    item = perspective(product, rng) if rng.random() < 0.6 else product
    if rng.random() < 0.5:
        item = item.transpose(Image.FLIP_LEFT_RIGHT)
    _paste(canvas, item, box, centre + rng.uniform(-0.06, 0.06) * box, centre + rng.uniform(-0.06, 0.06) * box,
           rng.uniform(-15, 15) if rng.random() < 0.4 else 0.0)
    # the detector's crop: around the product, loose and a little off-centre
    side = box * rng.uniform(1.05, 1.45)
    x0 = centre - side / 2 + rng.uniform(-0.08, 0.08) * side
    y0 = centre - side / 2 + rng.uniform(-0.08, 0.08) * side
    view = canvas.crop((int(x0), int(y0), int(x0 + side), int(y0 + side * np.exp(rng.uniform(-0.2, 0.2)))))
    view = view.resize((size, size), Image.BILINEAR)
    if rng.random() < 0.3:
        _hand(view, rng)
    return shop_camera(view, rng)


def shop_camera(view: Image.Image, rng: random.Random) -> np.ndarray:
    """``view`` as a phone shows it in a shop: light (brightness, contrast, colour, a colour cast), sensor
    noise, blur, JPEG softness; uint8 RGB. Geometry is untouched, so boxes drawn on ``view`` stay true
    (the detector's scenes use it after their labels are known)."""
    view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.55, 1.3))
    view = ImageEnhance.Contrast(view).enhance(rng.uniform(0.65, 1.25))
    view = ImageEnhance.Color(view).enhance(rng.uniform(0.6, 1.3))
    arr = np.asarray(view, dtype=np.float32)
    arr = arr * np.array([rng.uniform(0.85, 1.15) for _ in range(3)], dtype=np.float32)  # colour cast of shop light
    if rng.random() < 0.4:
        arr = arr + np.random.default_rng(rng.randint(0, 2**31)).normal(0, rng.uniform(2, 9), arr.shape)
    view = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        view = view.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.8)))
    if rng.random() < 0.5:  # JPEG softness of a phone photo
        buf = io.BytesIO()
        view.save(buf, "JPEG", quality=rng.randint(35, 85))
        view = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(view, dtype=np.uint8)
