"""Seeded synthetic 256-d catalog vectors for the search benchmarks, produced chunk by chunk, and their exact top 10.

Why chunks: 10M rows of 256 float32 are 10 GB, as much as the Milvus server under test wants; the rows are
generated again, identically, wherever they are needed (insert, ground truth, the queries' source rows) from the
random state saved at the start of each chunk, so no pass ever holds more than one chunk. The rows are bit for bit
those of the earlier in-memory generator, so collections kept by ``cloud_search.py --work`` stay valid.

Kinds (``cloud_search.py``'s module docstring has the numbers): ``catalog`` (categories -> products -> 5 images per
product, queries a noisy copy of one image) and ``flat`` (the first generator, in memory only; kept to compare with
old rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

DIM = 256
#: rows generated at a time (also the unit of the noise draws, so changing it changes the data)
CHUNK = 100_000


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


class SyntheticVectors:
    """``n`` seeded rows (``chunks()``) and ``n_queries`` queries (``q``) of the given kind."""

    def __init__(self, n: int, n_queries: int, seed: int = 0, kind: str = "catalog") -> None:
        self.n, self.kind = n, kind
        rng = np.random.default_rng(seed)
        if kind == "flat":
            centres = _unit(rng.standard_normal((max(1, n // 50), DIM)).astype(np.float32))
            self._x = _unit(centres[rng.integers(0, len(centres), n)] + 0.08 * rng.standard_normal((n, DIM)).astype(np.float32))
            self.q = _unit(self._x[rng.integers(0, n, n_queries)]
                           + 0.05 * rng.standard_normal((n_queries, DIM)).astype(np.float32))
            return
        if kind != "catalog":
            raise ValueError(f"unknown data kind {kind!r} (catalog, flat)")
        self._x = None
        categories = _unit(rng.standard_normal((max(1, n // 1000), DIM)).astype(np.float32))
        self._products = _unit(categories[rng.integers(0, len(categories), max(1, n // 5))]
                               + 0.05 * rng.standard_normal((max(1, n // 5), DIM)).astype(np.float32))
        self._states = []
        for i in range(0, n, CHUNK):  # walk the noise draws once to learn where each chunk's draws start
            self._states.append(rng.bit_generator.state)
            rng.standard_normal((min(n, i + CHUNK) - i, DIM))
        source = rng.integers(0, n, n_queries)
        self.q = _unit(self.rows(source) + 0.03 * rng.standard_normal((n_queries, DIM)).astype(np.float32))

    def chunk(self, k: int) -> np.ndarray:
        """Rows ``k * CHUNK`` up to the next chunk."""
        i = k * CHUNK
        j = min(self.n, i + CHUNK)
        if self._x is not None:
            return self._x[i:j]
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = self._states[k]
        noise = 0.022 * rng.standard_normal((j - i, DIM)).astype(np.float32)
        return _unit(self._products[np.arange(i, j) % len(self._products)] + noise)

    def chunks(self, progress: str = "") -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) for every chunk in order; ``progress``: a bar with that label."""
        ks = range((self.n + CHUNK - 1) // CHUNK)
        for k in tqdm(ks, desc=progress, unit="chunk") if progress else ks:
            yield k * CHUNK, self.chunk(k)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The rows with these numbers (each needed chunk generated once)."""
        out = np.empty((len(ids), DIM), dtype=np.float32)
        for k in np.unique(ids // CHUNK):
            sel = np.flatnonzero(ids // CHUNK == k)
            out[sel] = self.chunk(int(k))[ids[sel] - k * CHUNK]
        return out

    def materialise(self) -> np.ndarray:
        """All rows in memory (n x 1 KB: for the sizes an in-process peer like faiss HNSW needs anyway)."""
        if self._x is not None:
            return self._x
        x = np.empty((self.n, DIM), dtype=np.float32)
        for i, c in self.chunks():
            x[i:i + len(c)] = c
        return x

    def exact_top10(self, cache: Path | None = None, progress: bool = True) -> np.ndarray:
        """Each query's 10 nearest rows by exact inner product (ids, best first), one chunk at a time;
        with ``cache`` (a .npy path) computed once and read back after."""
        if cache is not None and cache.is_file():
            truth = np.load(cache)
            if truth.shape == (len(self.q), 10):
                return truth
        best_s = np.full((len(self.q), 10), -np.inf, dtype=np.float32)
        best_i = np.zeros((len(self.q), 10), dtype=np.int64)
        for start, x in self.chunks("exact top 10" if progress and self.n > 10 * CHUNK else ""):
            s, i = top10(x, self.q)
            s = np.concatenate([best_s, s], axis=1)
            i = np.concatenate([best_i, i + start], axis=1)
            keep = np.argsort(-s, axis=1, kind="stable")[:, :10]  # earlier rows win ties, as one argsort over all rows
            best_s, best_i = np.take_along_axis(s, keep, axis=1), np.take_along_axis(i, keep, axis=1)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, best_i)
        return best_i


def top10(x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and ids (rows of ``x``) of each query's 10 best rows, best first; queries 256 at a time."""
    k = min(10, len(x))
    scores = np.full((len(q), 10), -np.inf, dtype=np.float32)
    ids = np.zeros((len(q), 10), dtype=np.int64)
    for a in range(0, len(q), 256):
        s = q[a:a + 256] @ x.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < len(x) else np.tile(np.arange(len(x)), (len(s), 1))
        ps = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        scores[a:a + 256, :k] = np.take_along_axis(ps, order, axis=1)
        ids[a:a + 256, :k] = np.take_along_axis(part, order, axis=1)
    return scores, ids


def make_data(n: int, n_queries: int, seed: int = 0, kind: str = "catalog") -> tuple[np.ndarray, np.ndarray]:
    """All rows and the queries in memory (sizes up to a few million)."""
    data = SyntheticVectors(n, n_queries, seed, kind)
    return data.materialise(), data.q


def exact_top10(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Each query's 10 nearest rows of ``x`` (ids, best first)."""
    return top10(x, q)[1]
