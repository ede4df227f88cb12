"""Decoding photos like a phone does, and refusing the ones that would hurt.

A catalog import meets every kind of broken file, and a service that accepts
images must not be taken down by one: truncated JPEGs, PNG decompression
bombs, 1x100000 strips, odd EXIF. Every failure becomes an ``ImageError``
with a reason (code ``invalid_image``), never a crash or a hang.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np

from shoplens.contract.errors import ErrorCode, ShoplensError

MAX_FILE_BYTES = 40 * 1024 * 1024
MAX_PIXELS = 40_000_000  # a 48 MP phone photo is ~48M: downscaled by draft() for JPEGs before the check
MAX_SIDE = 20_000
MIN_SIDE = 8


class ImageError(ShoplensError, ValueError):
    """A photo that cannot be used; ``message`` says why."""

    code = ErrorCode.INVALID_IMAGE


def read_bytes(source: str | os.PathLike[str] | bytes, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        p = Path(source)
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise ImageError(f"image file not found: {p}") from None
        except OSError as exc:
            raise ImageError(f"cannot read {p}: {exc.strerror or exc}") from None
        if size > max_bytes:
            raise ImageError(f"{p}: {size} bytes is over the {max_bytes}-byte limit")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read {p}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ImageError(f"image is {len(data)} bytes, over the {max_bytes}-byte limit")
    if not data:
        raise ImageError("image is empty (0 bytes)")
    return data


def content_hash(data: bytes) -> str:
    """sha256 of the encoded bytes: the key that makes catalog imports resumable and dedupes exact copies."""
    return hashlib.sha256(data).hexdigest()


def decode_rgb(data: bytes, *, max_pixels: int = MAX_PIXELS, target_side: int | None = None) -> np.ndarray:
    """Encoded image -> HxWx3 uint8 RGB, upright per EXIF.

    ``target_side``: a JPEG may be decoded at a reduced scale (libjpeg draft
    mode) when the caller only needs that many pixels, which is how a 48 MP
    photo stays cheap.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if min(w, h) < MIN_SIDE or max(w, h) > MAX_SIDE:
                raise ImageError(f"image size {w}x{h} is outside {MIN_SIDE}..{MAX_SIDE} pixels per side")
            if target_side and im.format == "JPEG":
                im.draft("RGB", (target_side, target_side))
            if im.size[0] * im.size[1] > max_pixels:
                raise ImageError(f"image has {im.size[0] * im.size[1]} pixels, over the {max_pixels} limit")
            im.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}") from None
    except (UnidentifiedImageError, ImportError):
        # ImportError: in a process that imported ultralytics, Image.open is patched to try an
        # optional HEIF plugin on unidentified files; without it, the file is just unrecognised
        raise ImageError("not a recognised image format (corrupt or not an image)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - broken EXIF: keep the pixels as stored rather than lose the photo
        pass
    try:
        rgb = im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot convert image mode {im.mode} to RGB: {exc}") from None
    return np.asarray(rgb, dtype=np.uint8).copy()


def load_rgb(source: str | os.PathLike[str] | bytes, **kw: object) -> np.ndarray:
    """Read and decode in one step (file path or bytes)."""
    return decode_rgb(read_bytes(source), **kw)  # type: ignore[arg-type]
