"""benchmarks/synthetic_vectors.py: the 10M search benchmark generates its rows chunk by chunk and computes the
exact top 10 one chunk at a time; both must equal the whole-array computation, or recall@10 at 10M would be
measured against the wrong neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchkit import load_benchmark


@pytest.fixture(scope="module")
def sv():  # type: ignore[no-untyped-def]
    return load_benchmark("synthetic_vectors")


def test_chunks_regenerate_the_same_rows(sv) -> None:  # type: ignore[no-untyped-def]
    n = 2 * sv.CHUNK + 1234  # two full chunks and a partial one
    data = sv.SyntheticVectors(n, 64, seed=3)
    x = data.materialise()
    assert x.shape == (n, sv.DIM) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    again = sv.SyntheticVectors(n, 64, seed=3)
    assert np.array_equal(again.chunk(2), x[2 * sv.CHUNK:])  # a chunk generated alone, out of order
    ids = np.array([5, n - 1, sv.CHUNK, 5, sv.CHUNK - 1])
    assert np.array_equal(again.rows(ids), x[ids])
    assert np.array_equal(again.q, data.q)
    assert not np.array_equal(sv.SyntheticVectors(n, 64, seed=4).q, data.q)
    # the queries are noisy copies of rows (cosine ~0.9 to their source), as a shopper's photo of a catalog item
    assert np.median((data.q @ x.T).max(axis=1)) > 0.8


def test_chunked_exact_top10_equals_one_pass(sv, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    n = 2 * sv.CHUNK + 777
    data = sv.SyntheticVectors(n, 100, seed=1)
    whole = sv.exact_top10(data.materialise(), data.q)
    cache = tmp_path / "truth.npy"
    chunked = data.exact_top10(cache=cache, progress=False)
    assert np.array_equal(chunked, whole)
    assert (chunked >= 2 * sv.CHUNK).any() and (chunked < sv.CHUNK).any()  # neighbours come from every chunk
    np.save(cache, np.zeros_like(chunked))  # a cached result is read back, not recomputed
    assert not data.exact_top10(cache=cache, progress=False).any()


def test_flat_kind_and_unknown_kind(sv) -> None:  # type: ignore[no-untyped-def]
    x, q = sv.make_data(5000, 20, kind="flat")
    assert x.shape == (5000, sv.DIM) and q.shape == (20, sv.DIM)
    with pytest.raises(ValueError, match="unknown data kind"):
        sv.SyntheticVectors(100, 5, kind="nope")
