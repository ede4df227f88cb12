"""The detector's letterbox, shared by the device SDK and the converters (numpy only).

The detector was trained and exported with ultralytics' ``LetterBox``: scale the
photo to fit the square input keeping its aspect, resize with bilinear
interpolation (OpenCV ``INTER_LINEAR``: half-pixel centres, no antialiasing),
and pad both sides evenly with grey 114. A phone that preprocesses differently
feeds the model a different picture, so this module reproduces that rule
exactly in numpy (no OpenCV on the device) and returns the letterbox geometry
that ``yolo_decode`` needs to map boxes back to the original photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """Where the photo landed inside the model input: ``input = photo * gain + pad``.

    ``gain_x``/``gain_y`` differ by at most a rounding step (each side is
    rounded to whole pixels, as ultralytics does).
    """

    orig_h: int
    orig_w: int
    input_h: int
    input_w: int
    gain_x: float
    gain_y: float
    pad_x: int
    pad_y: int


def letterbox_geometry(orig_h: int, orig_w: int, input_h: int, input_w: int) -> Letterbox:
    """The exact ``LetterBox(auto=False, center=True, scaleup=True)`` geometry of ultralytics."""
    r = min(input_h / orig_h, input_w / orig_w)
    new_w, new_h = max(round(orig_w * r), 1), max(round(orig_h * r), 1)
    dw, dh = (input_w - new_w) / 2, (input_h - new_h) / 2
    # ultralytics puts the odd pixel at the bottom/right: round(d - 0.1) on the top/left side
    pad_x, pad_y = round(dw - 0.1), round(dh - 0.1)
    return Letterbox(orig_h, orig_w, input_h, input_w, new_w / orig_w, new_h / orig_h, pad_x, pad_y)


@lru_cache(maxsize=64)
def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of OpenCV's INTER_LINEAR along one axis (half-pixel centres, edge clamp)."""
    scale = src / dst
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    pos = np.clip(pos, 0.0, None)  # OpenCV clamps the left edge to pixel 0 with weight 1
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    i0 = np.minimum(i0, src - 1)
    i1 = np.minimum(i0 + 1, src - 1)
    for a in (i0, i1, frac):
        a.setflags(write=False)  # cached: shared by every call with these sizes
    return i0, i1, frac


@lru_cache(maxsize=64)
def _column_taps(src_w: int, dst_w: int, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The horizontal taps on a row flattened to ``w * channels`` values: source columns and weights per output value."""
    x0, x1, fx = _linear_taps(src_w, dst_w)
    ch = np.arange(channels)
    c0 = (x0[:, None] * channels + ch).ravel()
    c1 = (x1[:, None] * channels + ch).ravel()
    w1 = np.repeat(fx.astype(np.float32), channels)[None, :]
    w0 = 1 - w1
    for a in (c0, c1, w0, w1):
        a.setflags(write=False)
    return c0, c1, w0, w1


def _resize_rows(rows: np.ndarray, c0: np.ndarray, c1: np.ndarray, w0: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """Horizontal pass on ``[rows, w * channels]`` uint8: ``left * (1 - fx) + right * fx`` in float32."""
    out = np.take(rows, c0, axis=1).astype(np.float32)
    out *= w0
    right = np.take(rows, c1, axis=1).astype(np.float32)
    right *= w1
    out += right
    return out


def resize_bilinear(img: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Resize an HxWxC uint8 image like ``cv2.resize(..., INTER_LINEAR)`` (within 1 grey level).

    Every output value is ``(r0[x0] * (1 - fx) + r0[x1] * fx) * (1 - fy) + (r1[x0] * (1 - fx) + r1[x1] * fx) * fy``
    in float32, rounded. Why the two orders below: the horizontal pass of a source row is the same
    whichever output row reads it, so it runs once per source row when the image grows (fewer
    source rows than output rows) and on the picked rows only when it shrinks; the result is the
    same to the bit either way, and the work stays near the output's size (a phone photo of
    4032x3024 is never converted to float whole).
    """
    h, w = img.shape[:2]
    if (h, w) == (new_h, new_w):
        return img.copy()
    channels = img.shape[2]
    y0, y1, fy = _linear_taps(h, new_h)
    taps = _column_taps(w, new_w, channels)
    flat = img.reshape(h, w * channels)
    if h <= 2 * new_h:
        rows = _resize_rows(flat, *taps)
        top, bottom = rows[y0], rows[y1]
    else:
        top, bottom = _resize_rows(flat[y0], *taps), _resize_rows(flat[y1], *taps)
    fy32 = fy.astype(np.float32)[:, None]
    top *= 1 - fy32
    bottom *= fy32
    top += bottom
    np.rint(top, out=top)
    np.clip(top, 0, 255, out=top)
    return top.astype(np.uint8).reshape(new_h, new_w, channels)


def letterbox(rgb: np.ndarray, input_h: int, input_w: int, pad_value: int = PAD_VALUE) -> tuple[np.ndarray, Letterbox]:
    """Letterbox an HxWx3 uint8 image into ``input_h x input_w``; returns the image and its geometry."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {rgb.shape} dtype {rgb.dtype}")
    geo = letterbox_geometry(rgb.shape[0], rgb.shape[1], input_h, input_w)
    new_w, new_h = round(geo.gain_x * geo.orig_w), round(geo.gain_y * geo.orig_h)
    resized = resize_bilinear(rgb, new_h, new_w)
    out = np.full((input_h, input_w, 3), pad_value, dtype=np.uint8)
    out[geo.pad_y : geo.pad_y + new_h, geo.pad_x : geo.pad_x + new_w] = resized
    return out, geo
