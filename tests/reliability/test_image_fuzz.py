"""Image decoding under hostile input: every outcome is an RGB array or an ImageError, fast."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from shoplens.sdk.images import ImageError, decode_rgb


def _encoded(fmt: str, size: tuple[int, int] = (64, 48), **kw: object) -> bytes:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


SEEDS = {fmt: _encoded(fmt) for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_reject(data: bytes) -> None:
    t = time.perf_counter()
    try:
        out = decode_rgb(data)
    except ImageError as exc:
        assert exc.message
    else:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert time.perf_counter() - t < 5, "decoding must never hang"


@FUZZ
@given(fmt=st.sampled_from(sorted(SEEDS)), cut=st.floats(0, 1))
def test_truncated_files(fmt: str, cut: float) -> None:
    data = SEEDS[fmt]
    _decode_or_reject(data[: int(len(data) * cut)])


@FUZZ
@given(fmt=st.sampled_from(sorted(SEEDS)), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=20))
def test_corrupted_bytes(fmt: str, flips: list[tuple[float, int]]) -> None:
    data = bytearray(SEEDS[fmt])
    for where, value in flips:
        data[min(len(data) - 1, int(where * len(data)))] = value
    _decode_or_reject(bytes(data))


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    _decode_or_reject(data)


@pytest.mark.parametrize("orientation", [0, 1, 3, 6, 8, 9, 255, 65535])
def test_exif_orientation_oddities(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_rgb(_encoded("JPEG", exif=exif.tobytes()))
    assert out.shape[2] == 3 and sorted(out.shape[:2]) == [48, 64]


def test_garbage_exif_block_keeps_the_pixels() -> None:
    data = bytearray(_encoded("JPEG", exif=b"Exif\x00\x00" + b"\xff" * 64))
    out = decode_rgb(bytes(data))
    assert out.shape == (48, 64, 3)


@pytest.mark.parametrize(
    "size, match",
    [((30000, 10), "outside"), ((4, 4), "outside"), ((8000, 8000), "pixels")],
)
def test_dimension_limits(size: tuple[int, int], match: str) -> None:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, format="PNG")  # compresses to almost nothing: a would-be bomb
    with pytest.raises(ImageError, match=match):
        decode_rgb(buf.getvalue())


def test_png_header_lying_about_size_is_rejected_before_allocation() -> None:
    data = bytearray(_encoded("PNG"))
    data[16:24] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")  # IHDR width/height, CRC now wrong
    t = time.perf_counter()
    with pytest.raises(ImageError):
        decode_rgb(bytes(data))
    assert time.perf_counter() - t < 1


def test_big_jpeg_is_decoded_reduced_when_asked() -> None:
    data = _encoded("JPEG", size=(4000, 3000), quality=50)
    assert decode_rgb(data, target_side=640).shape[0] <= 3000 // 4 + 1


def test_garbage_is_rejected_even_after_ultralytics_patched_pillow() -> None:
    """ultralytics replaces Image.open with one that tries a HEIF plugin on unknown files (ImportError
    without it); a process that converts and decodes must still get a clean ImageError."""
    from shoplens.offline import prepare_ultralytics

    prepare_ultralytics()
    import ultralytics.utils.patches  # noqa: F401  (applies the patch)

    with pytest.raises(ImageError, match="not a recognised image"):
        decode_rgb(b"\x00garbage that is no image at all")
