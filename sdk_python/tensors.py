"""Turn a photo (or a crop) into exactly the input tensor a bundle's manifest describes.

The manifest is the only source of truth: resize rule, colour order,
scaling/mean/std, quantisation and layout all come from ``InputSpec``, so a
third-party model works when its manifest is right.

Resize rules: ``letterbox`` reproduces ultralytics (OpenCV INTER_LINEAR, no
antialiasing, grey padding; ``preprocess.letterbox``); ``stretch`` and
``center_crop`` use Pillow's bilinear, which antialiases when shrinking, as the
embedder's training pipeline does.
"""

from __future__ import annotations

import numpy as np

from shoplens.contract.manifest import ColorOrder, InputSpec, Layout, ResizeMode, TensorDType
from shoplens.sdk.preprocess import Letterbox, letterbox

_INT_RANGES = {TensorDType.UINT8: (0, 255), TensorDType.INT8: (-128, 127)}


def resize_pil(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR), dtype=np.uint8)


def center_crop(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    resized = resize_pil(rgb, nh, nw)
    top, left = (nh - height) // 2, (nw - width) // 2
    return resized[top : top + height, left : left + width]


def fit_image(rgb: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Letterbox | None]:
    """Resize per the manifest's rule; the letterbox geometry is returned for mapping boxes back."""
    if spec.resize is ResizeMode.LETTERBOX:
        return letterbox(rgb, spec.height, spec.width, spec.pad_value)
    if spec.resize is ResizeMode.CENTER_CROP:
        return center_crop(rgb, spec.height, spec.width), None
    return resize_pil(rgb, spec.height, spec.width), None


def pixel_table(spec: InputSpec) -> np.ndarray:
    """``[3, 256]``: the input value of each uint8 level per model channel (mean and std are in the model's channel order).

    Scaling, mean/std and quantisation act on each channel value alone, so they are computed
    once for the 256 levels and then looked up, instead of run over every pixel in float32
    (the same float32 arithmetic per value, so the same result to the bit).
    """
    levels = np.broadcast_to(np.arange(256, dtype=np.float32)[:, None], (256, 3))
    value = (levels * np.float32(spec.scale) - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    dtype = np.dtype(spec.dtype.value)
    if spec.quantization is not None:
        lo, hi = _INT_RANGES.get(spec.dtype, (None, None))
        if lo is None:
            raise ValueError(f"quantization given for a {spec.dtype.value} input")
        q = np.rint(value / spec.quantization.scale + spec.quantization.zero_point)
        table = np.clip(q, lo, hi).astype(dtype)
    elif spec.dtype in _INT_RANGES:
        lo, hi = _INT_RANGES[spec.dtype]
        table = np.clip(np.rint(value), lo, hi).astype(dtype)
    else:
        table = value.astype(dtype)
    return np.ascontiguousarray(table.T)


def encode_pixels(fitted: np.ndarray, spec: InputSpec) -> np.ndarray:
    """HxWx3 uint8 at the input size -> the batch-of-one tensor (dtype, scaling, quantisation, layout)."""
    source = fitted[..., ::-1] if spec.color_order is ColorOrder.BGR else fitted
    identity = spec.scale == 1.0 and spec.mean == [0.0, 0.0, 0.0] and spec.std == [1.0, 1.0, 1.0]
    if identity and spec.quantization is None and spec.dtype is TensorDType.UINT8:
        x = source.transpose(2, 0, 1) if spec.layout is Layout.NCHW else source
        return np.ascontiguousarray(x[None])  # raw pixels, bit-exact
    table = pixel_table(spec)
    h, w = fitted.shape[:2]
    if spec.layout is Layout.NCHW:
        out = np.empty((1, 3, h, w), table.dtype)
        for c in range(3):
            np.take(table[c], source[..., c], out=out[0, c])
    else:
        out = np.empty((1, h, w, 3), table.dtype)
        for c in range(3):
            out[0, ..., c] = np.take(table[c], source[..., c])
    return out


def prepare_input(rgb: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Letterbox | None]:
    fitted, geo = fit_image(rgb, spec)
    return encode_pixels(fitted, spec), geo
