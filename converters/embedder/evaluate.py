"""Retrieval quality of an embedder on a labelled catalog: product-level recall@k.

The phone's question is "which product is this?", so a hit is counted per
product: catalog items are ranked by cosine, collapsed to their products in
rank order, and recall@k asks whether the true product is among the first k
distinct products. With one iconic image per product this is plain recall@k;
with iconic + shelf photos several items share a product and only the first
counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from shoplens.converters.embedder.data import Catalog, Sample, load_batch


def product_ranking(sims: np.ndarray, catalog_labels: np.ndarray, k: int) -> np.ndarray:
    """[Q, k] product ids in rank order (distinct per row, -1 padded) from [Q, N] similarities."""
    order = np.argsort(-sims, axis=1, kind="stable")
    ranked = catalog_labels[order]
    out = np.full((sims.shape[0], k), -1, dtype=np.int64)
    for i, row in enumerate(ranked):
        _, first = np.unique(row, return_index=True)
        distinct = row[np.sort(first)][:k]
        out[i, : len(distinct)] = distinct
    return out


def recall_at(
    queries: np.ndarray, query_labels: Sequence[int], catalog: np.ndarray, catalog_labels: Sequence[int], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Product-level recall@k of L2-normalised query vectors against catalog vectors."""
    q_lab = np.asarray(query_labels)
    c_lab = np.asarray(catalog_labels)
    if len(q_lab) == 0:
        return {f"r@{k}": float("nan") for k in ks}
    ranked = product_ranking(queries @ catalog.T, c_lab, max(ks))
    return {f"r@{k}": float(np.mean([(ranked[i, :k] == q_lab[i]).any() for i in range(len(q_lab))])) for k in ks}


def topk_overlap(a: np.ndarray, b: np.ndarray, catalog: np.ndarray, k: int = 10) -> float:
    """Mean |top-k(a) ∩ top-k(b)| / k: do two embedders retrieve the same catalog items?"""
    k = min(k, catalog.shape[0])
    ta = np.argsort(-(a @ catalog.T), axis=1)[:, :k]
    tb = np.argsort(-(b @ catalog.T), axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb)]))


@dataclass
class RetrievalSets:
    """The evaluation protocol: val photos against the catalog images (+ train photos).

    ``iconic`` holds every catalog image: one per product in the Grocery layout, one or several in a
    shop catalog; recall is counted per product (``recall_at``), so several images of a product are one hit.
    """

    val: list[Sample]
    iconic: list[Sample]
    train: list[Sample]

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> "RetrievalSets":
        return cls(catalog.split("val"), catalog.iconic_samples(), catalog.split("train"))


def evaluate_vectors(
    sets: RetrievalSets,
    vec: dict[str, np.ndarray],
    *,
    unseen: set[int] | None = None,
    novel: set[int] | None = None,
) -> dict[str, float]:
    """Recall figures from precomputed vectors (keys ``val``, ``iconic``, optional ``train``).

    ``seen`` rows use every val photo (or only products not in ``unseen``);
    ``unseen`` rows query the held-out products' val photos against all
    iconic images and against the held-out iconic images only, and (with
    ``train`` vectors) their train-split photos against all iconic images: those
    photos were never trained on either, and there are ~8x more of them.
    ``novel`` rows query the train-split photos of products kept out of a
    selection run against all iconic images (no val photo is used).
    """
    vl = np.array([s.product for s in sets.val])
    il = np.array([s.product for s in sets.iconic])
    tl = np.array([s.product for s in sets.train])
    out: dict[str, float] = {}

    def rows(prefix: str, queries: np.ndarray, labels: np.ndarray, catalog: np.ndarray, catalog_labels: np.ndarray) -> None:
        out.update({f"{prefix}_{k}": v for k, v in recall_at(queries, labels, catalog, catalog_labels).items()})

    seen_mask = np.ones(len(vl), bool) if not unseen else ~np.isin(vl, list(unseen))
    rows("photo_iconic", vec["val"][seen_mask], vl[seen_mask], vec["iconic"], il)
    if "train" in vec:
        rows("photo_iconic_train", vec["val"][seen_mask], vl[seen_mask], np.concatenate([vec["iconic"], vec["train"]]), np.concatenate([il, tl]))
    if unseen:
        um = np.isin(vl, list(unseen))
        im = np.isin(il, list(unseen))
        rows("unseen_photo_iconic", vec["val"][um], vl[um], vec["iconic"], il)
        rows("unseen_photo_iconic_heldout_only", vec["val"][um], vl[um], vec["iconic"][im], il[im])
        out["unseen_queries"] = float(um.sum())
        if "train" in vec:
            tm = np.isin(tl, list(unseen))
            rows("unseen_train_photo_iconic", vec["train"][tm], tl[tm], vec["iconic"], il)
            out["unseen_train_queries"] = float(tm.sum())
    if novel and "train" in vec:
        nm = np.isin(tl, list(novel))
        rows("novel_photo_iconic", vec["train"][nm], tl[nm], vec["iconic"], il)
        out["novel_queries"] = float(nm.sum())
    out["queries"] = float(seen_mask.sum())
    return out


def embed_paths(embed: Callable[[np.ndarray], np.ndarray], samples: Sequence[Sample], size: int, batch: int = 32) -> np.ndarray:
    """Vectors for samples, via any ``uint8 NHWC batch -> [N, dim]`` function (torch, TFLite, ...)."""
    chunks = []
    for i in range(0, len(samples), batch):
        chunks.append(embed(load_batch([s.path for s in samples[i : i + batch]], size)))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
