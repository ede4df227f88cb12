"""A grouped search as rounds of Milvus requests, so a query gets ``top_k`` distinct products when they exist.

Why rounds: a window of images can fill up with one product's images (a product
with 50 catalog photos near the query), and Milvus' own grouping can return
fewer groups than asked. A query left with fewer than ``top_k`` products is asked
again, alone with the others left short, over a window four times wider, until it
is filled, the window was not full (the catalog, after filters, has no more), the
window reached a hit below ``min_score``, or the window reached Milvus' limit.
:func:`search_rounds` is a generator (yields requests, receives raw hits), so the
sync and the asyncio client run the same rounds.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from shoplens.contract.schemas import ProductHit
from shoplens.settings import Settings

from shoplens.cloud import schema as cs
from shoplens.cloud.binding import Binding

#: Milvus refuses a larger limit (topk) in one search
MILVUS_MAX_TOPK = 16384

Rounds = Generator[dict[str, Any], Any, tuple[list[list[ProductHit]], str]]


def search_request(settings: Settings, binding: Binding, vectors: np.ndarray, limit: int, expr: str, grouped: bool) -> dict[str, Any]:
    """The keyword arguments of one Milvus search (either client)."""
    params = dict(settings.search_params)
    if "ef" in params:  # HNSW needs ef >= limit
        params["ef"] = max(int(params["ef"]), limit)
    if "search_list" in params:  # DiskANN needs search_list >= limit
        params["search_list"] = max(int(params["search_list"]), limit)
    kwargs: dict[str, Any] = dict(
        collection_name=binding.collection,
        data=cs.as_stored(vectors, binding.storage),
        filter=expr,
        limit=limit,
        output_fields=cs.OUTPUT_FIELDS,
        search_params={"metric_type": binding.metric, "params": params},
        anns_field=cs.VECTOR,
        consistency_level=settings.read_consistency,
    )
    if grouped:
        kwargs["group_by_field"] = "product_id"
    return kwargs


def distinct_products(per_query: Any, top_k: int, min_score: float | None) -> tuple[list[ProductHit], bool]:
    """The best image of each product, best first, at most ``top_k``; and whether a hit fell below ``min_score``."""
    seen: set[str] = set()
    hits: list[ProductHit] = []
    below = False
    for h in sorted(per_query, key=lambda h: -float(h["distance"])):
        entity = h.get("entity", {})
        pid = str(entity.get("product_id", ""))
        score = float(h["distance"])
        if min_score is not None and score < min_score:
            below = True
            break
        if pid in seen:
            continue
        seen.add(pid)
        hits.append(cs.row_to_hit(cs.hit_id(h), score, entity))
        if len(hits) == top_k:
            break
    return hits, below


def search_rounds(settings: Settings, native_grouping: bool, binding: Binding, vectors: np.ndarray, top_k: int,
                  expr: str, min_score: float | None) -> Rounds:
    """Yields each Milvus request, receives its raw hits, returns (results per query, grouping path)."""
    grouped = native_grouping
    path = "native" if grouped else "overfetch"
    window = min(MILVUS_MAX_TOPK, top_k * settings.overfetch_factor)
    limit = top_k if grouped else window
    results: list[list[ProductHit]] = [[] for _ in range(len(vectors))]
    pending = list(range(len(vectors)))
    while pending:
        raw = yield search_request(settings, binding, vectors[pending], limit, expr, grouped)
        short: list[int] = []
        for qi, per_query in zip(pending, raw):
            hits, below = distinct_products(per_query, top_k, min_score)
            results[qi] = hits
            exhausted = below or (not grouped and len(per_query) < limit)
            if len(hits) < top_k and not exhausted:
                short.append(qi)
        if not short or (not grouped and limit >= MILVUS_MAX_TOPK):
            break
        if grouped:  # the grouping search fell short: group the service's own windows from here
            grouped, limit = False, window
        else:
            limit = min(MILVUS_MAX_TOPK, limit * 4)
        pending = short
        path = "overfetch"
    return results, path
