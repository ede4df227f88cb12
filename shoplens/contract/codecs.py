"""Vector wire encodings: how a 256-d embedding travels from phone to cloud.

Every vector on the wire is L2-normalised and compared by cosine (= inner
product of unit vectors). That is what makes the ``i8`` encoding simple: a
per-vector max-abs scale maps the largest component to +-127, and the scale is
*not transmitted*, because the receiver re-normalises and cosine does not care
about length. The payload is therefore exactly ``dim`` bytes, and precision
adapts to each vector (a fixed ``round(x*127)`` would waste most of the int8
range: components of a unit 256-d vector are ~0.06, i.e. ~8 of 127 steps).

Sizes on the wire (before base64): ``f32`` 4*dim, ``f16`` 2*dim, ``i8`` dim
bytes; base64 adds 4/3 (``encoded_size`` gives the exact string length).
All multi-byte values are little-endian.
"""

from __future__ import annotations

import base64
import binascii
import math
from enum import Enum

import numpy as np

from shoplens.contract.errors import ErrorCode, VectorError

_NORM_EPS = 1e-12


class Encoding(str, Enum):
    """The three encodings a client may upload."""

    F32 = "f32"
    F16 = "f16"
    I8 = "i8"

    @property
    def bytes_per_component(self) -> int:
        return {"f32": 4, "f16": 2, "i8": 1}[self.value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype({"f32": "<f4", "f16": "<f2", "i8": "i1"}[self.value])


def parse_encoding(value: str | Encoding) -> Encoding:
    """Accept an encoding name with a clear error listing the valid ones."""
    if isinstance(value, Encoding):
        return value
    try:
        return Encoding(value)
    except ValueError:
        valid = ", ".join(e.value for e in Encoding)
        raise VectorError(
            f"unknown vector encoding {value!r}; expected one of: {valid}",
            code=ErrorCode.UNKNOWN_ENCODING,
        ) from None


def payload_size(dim: int, encoding: str | Encoding) -> int:
    """Raw bytes of one encoded vector (before base64)."""
    return dim * parse_encoding(encoding).bytes_per_component


def encoded_size(dim: int, encoding: str | Encoding) -> int:
    """Exact length of the base64 string of one encoded vector."""
    return 4 * math.ceil(payload_size(dim, encoding) / 3)


def l2_normalize(vector: np.ndarray) -> np.ndarray:
    """Unit-length float32 copy; refuses vectors that have no direction."""
    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm < _NORM_EPS:
        raise VectorError(f"vector has zero or non-finite norm ({norm}); cannot normalise")
    return (v / norm).astype(np.float32)


def _check_vector(vector: np.ndarray, dim: int | None) -> np.ndarray:
    v = np.asarray(vector)
    if v.ndim != 1:
        raise VectorError(f"expected a 1-d vector, got an array of shape {v.shape}")
    if not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
        raise VectorError(f"expected a real numeric vector, got dtype {v.dtype}")
    if dim is not None and v.shape[0] != dim:
        raise VectorError(
            f"vector has {v.shape[0]} components, the model's dimension is {dim}",
            code=ErrorCode.WRONG_DIMENSION,
        )
    if v.shape[0] == 0:
        raise VectorError("vector is empty")
    bad = ~np.isfinite(v.astype(np.float64))
    if bad.any():
        i = int(np.argmax(bad))
        raise VectorError(f"vector contains NaN or infinity (first at index {i}: {v[i]})")
    return v.astype(np.float64)


def encode_vector(vector: np.ndarray, encoding: str | Encoding, dim: int | None = None) -> str:
    """Normalise ``vector`` and return its base64 wire form.

    Normalising here (not trusting the caller) means every encoding carries a
    unit vector, so the decoder's error bounds hold whatever the model emitted.
    """
    enc = parse_encoding(encoding)
    unit = l2_normalize(_check_vector(vector, dim)).astype(np.float64)
    if enc is Encoding.I8:
        peak = float(np.max(np.abs(unit)))
        raw = np.clip(np.rint(unit * (127.0 / peak)), -127, 127).astype("i1")
    else:
        raw = unit.astype(enc.dtype)
    return base64.b64encode(raw.tobytes()).decode("ascii")


def decode_vector(data: str | bytes, encoding: str | Encoding, dim: int) -> np.ndarray:
    """Decode a base64 wire vector into a unit float32 vector of length ``dim``.

    Raises :class:`VectorError` (a 422 on the service) for bad base64, a byte
    length that is not ``dim`` components, NaN/inf, or a zero vector.
    """
    enc = parse_encoding(encoding)
    if isinstance(data, str):
        try:
            data = data.encode("ascii")
        except UnicodeEncodeError:
            raise VectorError("vector data is not base64 (non-ASCII characters)") from None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VectorError(f"vector data is not valid base64: {exc}") from None
    expected = payload_size(dim, enc)
    if len(raw) != expected:
        got_components = len(raw) / enc.bytes_per_component
        code = ErrorCode.WRONG_DIMENSION if got_components.is_integer() else ErrorCode.INVALID_VECTOR
        raise VectorError(
            f"{enc.value} vector of dimension {dim} must be {expected} bytes "
            f"({encoded_size(dim, enc)} base64 characters); got {len(raw)} bytes"
            + (f" (= {int(got_components)} components)" if got_components.is_integer() else ""),
            code=code,
        )
    values = np.frombuffer(raw, dtype=enc.dtype).astype(np.float64)
    if enc is Encoding.I8 and np.any(values == -128):
        raise VectorError("i8 vectors use the symmetric range -127..127; -128 is not allowed")
    return l2_normalize(_check_vector(values, dim))


def decode_batch(items: list[str], encoding: str | Encoding, dim: int) -> np.ndarray:
    """Decode several vectors; the error names the index of the bad one."""
    out = np.empty((len(items), dim), dtype=np.float32)
    for i, item in enumerate(items):
        try:
            out[i] = decode_vector(item, encoding, dim)
        except VectorError as exc:
            raise VectorError(f"vectors[{i}]: {exc.message}", code=exc.code) from None
    return out


def max_decode_error_angle(dim: int, encoding: str | Encoding, peak: float = 1.0) -> float:
    """Upper bound on sin(angle) between a unit vector and its decoded copy.

    Used by the tests and quoted in docs/protocol.md. ``peak`` is the vector's
    largest absolute component (<= 1 for unit vectors).
    - i8: each component is off by <= 0.5 step of ``peak/127``.
    - f16: relative rounding 2**-11 per component (normal range), plus the
      subnormal spacing 2**-24 per component for tiny values.
    - f32: relative rounding 2**-24.
    """
    enc = parse_encoding(encoding)
    if enc is Encoding.I8:
        return min(1.0, 0.5 * math.sqrt(dim) * peak / 127.0)
    if enc is Encoding.F16:
        return min(1.0, 2.0**-11 + math.sqrt(dim) * 2.0**-24)
    return min(1.0, 2.0**-23)
