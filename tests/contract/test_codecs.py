"""Property-based tests of the vector wire encodings (f32, f16, i8)."""

from __future__ import annotations

import base64
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shoplens.contract.codecs import (
    Encoding,
    decode_batch,
    decode_vector,
    encode_vector,
    encoded_size,
    max_decode_error_angle,
    payload_size,
)
from shoplens.contract.errors import ErrorCode, VectorError

ENCODINGS = list(Encoding)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)


def vectors(min_dim: int = 1, max_dim: int = 512):
    return st.integers(min_dim, max_dim).flatmap(lambda d: arrays(np.float32, d, elements=finite))


def _sin_angle(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) / np.linalg.norm(a)
    b = b.astype(np.float64) / np.linalg.norm(b)
    cos = float(a @ b)
    if cos <= 0:
        return 1.0
    return float(np.linalg.norm(a - cos * b))  # stable for tiny angles, unlike sqrt(1 - cos**2)


@settings(max_examples=300, deadline=None)
@given(v=vectors(), enc=st.sampled_from(ENCODINGS))
def test_round_trip_within_bound(v: np.ndarray, enc: Encoding) -> None:
    norm = float(np.linalg.norm(v.astype(np.float64)))
    assume(norm > 1e-6)
    unit = v.astype(np.float64) / norm
    data = encode_vector(v, enc)
    assert len(data) == encoded_size(v.shape[0], enc)
    assert len(base64.b64decode(data)) == payload_size(v.shape[0], enc)
    out = decode_vector(data, enc, v.shape[0])
    assert out.dtype == np.float32 and out.shape == v.shape
    assert abs(float(np.linalg.norm(out.astype(np.float64))) - 1.0) < 1e-5
    bound = max_decode_error_angle(v.shape[0], enc, peak=float(np.max(np.abs(unit))))
    # float32 output rounding adds ~1e-7 per component
    assert _sin_angle(unit, out) <= bound + 2e-6


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), enc=st.sampled_from(ENCODINGS))
def test_typical_embeddings_keep_cosine(seed: int, enc: Encoding) -> None:
    """Realistic 256-d embeddings: i8 keeps cosine >= 0.999, f16 >= 0.99999."""
    v = np.random.default_rng(seed).standard_normal(256).astype(np.float32)
    out = decode_vector(encode_vector(v, enc), enc, 256)
    cos = float(out @ (v / np.linalg.norm(v)))
    floor = {Encoding.F32: 0.999999, Encoding.F16: 0.99999, Encoding.I8: 0.999}[enc]
    assert cos >= floor


def test_exact_sizes_for_256d() -> None:
    assert [payload_size(256, e) for e in ("f32", "f16", "i8")] == [1024, 512, 256]
    assert [encoded_size(256, e) for e in ("f32", "f16", "i8")] == [1368, 684, 344]


def test_i8_uses_full_range_and_no_minus_128() -> None:
    v = np.linspace(-1, 0.5, 256).astype(np.float32)
    raw = np.frombuffer(base64.b64decode(encode_vector(v, "i8")), dtype=np.int8)
    assert raw.min() == -127 and raw.max() < 127


@settings(max_examples=100, deadline=None)
@given(v=vectors(1, 64), enc=st.sampled_from(ENCODINGS), pos=st.integers(0, 63), bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nan_and_inf_rejected_on_encode(v: np.ndarray, enc: Encoding, pos: int, bad: float) -> None:
    v = v.copy()
    v[pos % v.shape[0]] = bad
    with pytest.raises(VectorError, match="NaN or infinity") as info:
        encode_vector(v, enc)
    assert info.value.code is ErrorCode.INVALID_VECTOR


@pytest.mark.parametrize("enc", ["f32", "f16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_rejected_on_decode(enc: str, bad: float) -> None:
    raw = np.full(8, 0.1, dtype=Encoding(enc).dtype)
    raw[3] = bad
    with pytest.raises(VectorError, match="index 3"):
        decode_vector(base64.b64encode(raw.tobytes()).decode(), enc, 8)


@settings(max_examples=100, deadline=None)
@given(dim=st.integers(1, 300), delta=st.integers(-5, 5).filter(lambda d: d != 0), enc=st.sampled_from(ENCODINGS))
def test_wrong_dimension_rejected(dim: int, delta: int, enc: Encoding) -> None:
    assume(dim + delta > 0)
    data = encode_vector(np.ones(dim + delta, dtype=np.float32), enc)
    with pytest.raises(VectorError, match=f"dimension {dim}") as info:
        decode_vector(data, enc, dim)
    assert info.value.code is ErrorCode.WRONG_DIMENSION
    with pytest.raises(VectorError) as info2:
        encode_vector(np.ones(dim + delta), enc, dim=dim)
    assert info2.value.code is ErrorCode.WRONG_DIMENSION


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(min_size=1, max_size=64), enc=st.sampled_from(ENCODINGS))
def test_odd_byte_lengths_rejected_as_invalid(raw: bytes, enc: Encoding) -> None:
    assume(len(raw) % enc.bytes_per_component != 0)
    with pytest.raises(VectorError) as info:
        decode_vector(base64.b64encode(raw).decode(), enc, 16)
    assert info.value.code is ErrorCode.INVALID_VECTOR


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40), enc=st.sampled_from(ENCODINGS))
def test_garbage_text_never_crashes(text: str, enc: Encoding) -> None:
    """Arbitrary strings either decode to a unit vector or raise VectorError, nothing else."""
    try:
        out = decode_vector(text, enc, 4)
    except VectorError as exc:
        assert exc.message
    else:
        assert abs(float(np.linalg.norm(out)) - 1) < 1e-5


@pytest.mark.parametrize("data", ["not base64!!", "AAA", "ü==", "AAAA===="])
def test_bad_base64(data: str) -> None:
    with pytest.raises(VectorError, match="base64") as info:
        decode_vector(data, "f32", 1)
    assert info.value.code is ErrorCode.INVALID_VECTOR


@pytest.mark.parametrize("enc", ENCODINGS)
def test_zero_vector_rejected(enc: Encoding) -> None:
    with pytest.raises(VectorError, match="zero"):
        encode_vector(np.zeros(16), enc)
    zero = base64.b64encode(np.zeros(16, dtype=enc.dtype).tobytes()).decode()
    with pytest.raises(VectorError, match="zero"):
        decode_vector(zero, enc, 16)


def test_minus_128_rejected() -> None:
    raw = np.full(4, 10, dtype=np.int8)
    raw[0] = -128
    with pytest.raises(VectorError, match="-128"):
        decode_vector(base64.b64encode(raw.tobytes()).decode(), "i8", 4)


def test_unknown_encoding_and_shapes() -> None:
    with pytest.raises(VectorError, match="expected one of: f32, f16, i8") as info:
        encode_vector(np.ones(4), "bf16")
    assert info.value.code is ErrorCode.UNKNOWN_ENCODING
    with pytest.raises(VectorError, match="1-d"):
        encode_vector(np.ones((2, 2)), "f32")
    with pytest.raises(VectorError, match="empty"):
        encode_vector(np.ones(0), "f32")
    with pytest.raises(VectorError, match="numeric"):
        encode_vector(np.array(["a", "b"]), "f32")


def test_batch_names_bad_index() -> None:
    good = encode_vector(np.ones(8), "f16")
    out = decode_batch([good, good], "f16", 8)
    assert out.shape == (2, 8)
    with pytest.raises(VectorError, match=r"vectors\[1\]"):
        decode_batch([good, "@@"], "f16", 8)
