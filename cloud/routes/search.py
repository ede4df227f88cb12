"""What devices call: search by vector (one or a batch), and which model id the catalog is served for."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from shoplens.contract.codecs import decode_batch, decode_vector
from shoplens.contract.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    ObjectResults,
    ProductHit,
    SearchRequest,
    SearchResponse,
)
from shoplens.contract.service import Models

from shoplens.cloud.auth import Principal
from shoplens.cloud.filters import build_filter
from shoplens.cloud.registry import ModelStatus, http_date
from shoplens.cloud.state import ServiceState, require_search, service_state
from shoplens.cloud.store import Binding
from shoplens.cloud.store_errors import StoreError

router = APIRouter(tags=["search"])


async def _route(state: ServiceState, model_id: str, response: Response) -> Binding:
    """The collection serving ``model_id`` (409 unknown, 410 retired); a deprecated model's answers
    carry ``Deprecation`` (RFC 9745) and ``Sunset`` (RFC 8594) headers."""
    # a fresh cached route costs nothing; refreshing it calls Milvus (and may wait for a load), so off the loop
    try:
        binding, entry = state.store.cached_route(model_id) or await run_in_threadpool(state.store.route, model_id)
    except StoreError as exc:
        state.metrics.model_requests.labels(model_id=state.model_label(model_id), outcome=exc.code.value).inc()
        raise
    if entry.status is ModelStatus.DEPRECATED:
        response.headers["Deprecation"] = f"@{entry.deprecated_at}"
        if entry.sunset:
            response.headers["Sunset"] = http_date(entry.sunset)
    state.metrics.model_requests.labels(model_id=model_id, outcome=entry.status.value).inc()
    return binding


async def _search(state: ServiceState, body: SearchRequest | BatchSearchRequest, binding: Binding,
                  vectors: np.ndarray, kind: str, t0: float) -> tuple[list[list[ProductHit]], str, float]:
    """The Milvus search on the event loop (pymilvus' asyncio client), timed and optionally logged."""
    results, grouping = await state.store.search_async(
        binding, vectors, top_k=body.top_k, expr=build_filter(body.filters), min_score=body.min_score)
    took = time.perf_counter() - t0
    state.metrics.search_seconds.labels(kind=kind, grouping=grouping).observe(took)
    state.metrics.model_search_seconds.labels(model_id=binding.model_id).observe(took)
    if state.query_log is not None:
        sent = [body.vector] if isinstance(body, SearchRequest) else body.vectors
        state.query_log.record(binding.model_id, body.encoding.value, sent, [[h.product_id for h in r] for r in results])
    return results, grouping, took


@router.post("/v1/search", response_model=SearchResponse)
async def search(body: SearchRequest, request: Request, response: Response,
                 _: Principal = Depends(require_search)) -> SearchResponse:
    """Distinct products nearest to one vector, best-matching image per product, in the collection
    of the vector's model id (several model ids are served at once during a rollout)."""
    t0 = time.perf_counter()
    state = service_state(request)
    binding = await _route(state, body.model_id, response)
    vector = decode_vector(body.vector, body.encoding, binding.dim)
    results, grouping, took = await _search(state, body, binding, vector[None, :], "single", t0)
    return SearchResponse(model_id=binding.model_id, hits=results[0], grouping=grouping, took_ms=took * 1000)


@router.post("/v1/search/batch", response_model=BatchSearchResponse)
async def search_batch(body: BatchSearchRequest, request: Request, response: Response,
                       principal: Principal = Depends(require_search)) -> BatchSearchResponse:
    """Several vectors (one per detected object), one Milvus round trip (nq > 1)."""
    t0 = time.perf_counter()
    state = service_state(request)
    if len(body.vectors) > 1:  # each extra vector costs a token: a batch is not a way around the rate limit
        state.limiter.take(principal.key_id, cost=len(body.vectors) - 1)
    binding = await _route(state, body.model_id, response)
    vectors = decode_batch(body.vectors, body.encoding, binding.dim)
    results, grouping, took = await _search(state, body, binding, vectors, "batch", t0)
    return BatchSearchResponse(model_id=binding.model_id, grouping=grouping, took_ms=took * 1000,
                               results=[ObjectResults(index=i, hits=h) for i, h in enumerate(results)])


@router.get("/v1/models", response_model=Models)
def models(request: Request, _: Principal = Depends(require_search)) -> Models:
    """Every model id the service knows, with its status: ``current`` is what new apps should embed
    with; ``supported`` and ``deprecated`` ones are served too (deprecated until their sunset date);
    ``retired`` ones are answered 410."""
    store = service_state(request).store
    return Models(alias=store.alias, models=store.model_infos())
