"""The FastAPI app factory: routes, auth, limits, metrics, wired to one :class:`CatalogStore`.

``create_app(settings)`` builds an independent app (own store, registry,
rate limiter), so tests and benchmarks can run several side by side and
``shoplens serve`` is a thin uvicorn wrapper around it. Endpoints are plain
``def``: pymilvus is blocking, so Starlette runs them in its thread pool.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoplens import __version__
from shoplens.contract.codecs import decode_batch, decode_vector
from shoplens.contract.errors import ErrorCode
from shoplens.contract.model_id import MODEL_ID_PATTERN
from shoplens.contract.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    ErrorResponse,
    ObjectResults,
    ProductHit,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResponse,
)
from shoplens.settings import Settings, get_settings

from shoplens.cloud.auth import KeyRing, Principal, RateLimiter, Role
from shoplens.cloud.errors import ApiError, install_error_handlers
from shoplens.cloud.filters import build_filter
from shoplens.cloud.limits import BodyLimitMiddleware
from shoplens.cloud.metrics import Metrics
from shoplens.cloud.query_log import QueryLog
from shoplens.cloud.store import Binding, CatalogStore

log = logging.getLogger("shoplens.cloud")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 422, 429, 503)
}


# ---- response bodies that only the service produces ------------------------------------


class Health(BaseModel):
    status: str = "ok"
    version: str = __version__


class Ready(BaseModel):
    status: str
    backend: str = Field(description="lite or server")
    server_version: str
    grouping: str = Field(description="how search results are grouped by product on this backend")


class ModelInfo(BaseModel):
    model_id: str
    dim: int
    metric: str
    collection: str
    active: bool


class Models(BaseModel):
    alias: str
    models: list[ModelInfo]


class Stats(BaseModel):
    alias: str
    backend: str
    server_version: str
    grouping: str
    model_id: str | None
    collection: str | None
    vector_storage: str | None = Field(default=None, description="f32 or f16: how the served collection stores vectors")
    rows: int
    segments: int | None = Field(default=None, description="sealed segments of the served collection loaded for search "
                                 "(servers; Milvus Lite does not report them): each search visits every one")
    warnings: list[str]


class CreateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model_id: str = Field(pattern=MODEL_ID_PATTERN)
    activate: bool = Field(default=False, description="serve it now (alias swap); otherwise build it, then activate")


class CollectionInfo(BaseModel):
    collection: str
    model_id: str
    dim: int
    vector_storage: str = "f32"
    active: bool


class DeleteResult(BaseModel):
    deleted: int


class Flushed(BaseModel):
    collection: str
    rows: int


class ProductImages(BaseModel):
    product_id: str
    model_id: str
    images: list[dict[str, Any]]


# ---- metrics middleware ----------------------------------------------------------------


class MetricsMiddleware:
    """Counts and times every request under its route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method=method, route=template, status=str(status)).inc()
            self.metrics.request_seconds.labels(method=method, route=template).observe(time.perf_counter() - t0)


# ---- the factory -----------------------------------------------------------------------


class ServiceState:
    """Everything one app instance owns."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = CatalogStore(settings, observe=self.metrics.observe_milvus)
        self.keys = KeyRing(settings)
        self.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.create_lock = threading.Lock()
        self.lite_warned = False
        self.query_log = QueryLog(settings.query_log, settings.query_log_max_bytes) if settings.query_log else None

    def lite_warning(self, rows: int) -> str | None:
        if not self.store.lite or rows <= self.settings.lite_warn_rows:
            return None
        return (
            f"Milvus Lite holds {rows} rows, past {self.settings.lite_warn_rows} where it stops serving well "
            "(measured through HTTP: p99 22 ms at 20k rows, 80 ms at 50k, 223 ms at 100k; one process only). "
            "Move to a Milvus server: "
            "set SHOPLENS_MILVUS_URI=http://<host>:19530 and re-upsert the catalog (docs/cloud.md)."
        )

    def segment_warning(self, segment_rows: list[int] | None) -> str | None:
        rows = segment_rows or []
        n = len(rows)
        if n < self.settings.segment_warn_count:
            return None
        median = int(statistics.median(rows))
        if median >= self.settings.segment_warn_rows:
            return None
        return (
            f"the served collection is spread over {n} segments of ~{median} rows: each search visits every "
            "segment's index, so a few large segments answer faster for the same rows. On the server, raise "
            "dataCoord.segment.maxSize and dataCoord.segment.sealProportion before the catalog is built "
            "(docs/cloud.md, 'Segment size')."
        )


def _state(request: Request) -> ServiceState:
    return request.app.state.shoplens  # type: ignore[no-any-return]


def _guard(need: Role) -> Callable[[Request], Awaitable[Principal]]:
    # async on purpose: a sync dependency costs a thread-pool hop per request before the
    # endpoint's own hop to Milvus (measured in benchmarks/http_overhead.py); this is CPU-only
    async def dependency(request: Request) -> Principal:
        st = _state(request)
        principal = st.keys.authenticate(request, need=need)
        st.limiter.take(principal.key_id)
        return principal

    return dependency


require_search = _guard(Role.DEVICE)
require_admin = _guard(Role.ADMIN)


def _check_model(binding: Binding, model_id: str, what: str = "the catalog") -> None:
    if model_id != binding.model_id:
        raise ApiError(
            ErrorCode.MODEL_MISMATCH,
            f"vector model id {model_id!r} does not match {what}'s model id {binding.model_id!r}; "
            "update the app's embedder bundle (vectors of different models are not comparable)",
            details={"request_model_id": model_id, "catalog_model_id": binding.model_id},
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new service instance; ``settings`` default to the environment (``SHOPLENS_*``)."""
    settings = settings or get_settings()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not state.keys.has_admin:
            log.warning("no admin key configured (SHOPLENS_ADMIN_KEYS): catalog writes are refused")
        try:
            version = state.store.ping()
            log.info("Milvus ready: %s at %s", version, "Lite file" if state.store.lite else "server")
        except ApiError:
            log.warning("Milvus not reachable at startup; /v1/ready answers 503 until it is")
        yield
        await state.store.aclose()
        state.store.close()

    app = FastAPI(
        title="shoplens cloud search",
        version=__version__,
        description="Search a product catalog by image embedding. Vectors only: photos never leave the phone.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.shoplens = state
    install_error_handlers(app)

    # ---- probes & metrics ----

    @app.get("/v1/health", response_model=Health, tags=["ops"])
    def health() -> Health:
        """Liveness: the process answers (does not touch Milvus)."""
        return Health()

    @app.get("/v1/ready", response_model=Ready, tags=["ops"])
    def ready() -> Ready:
        """Readiness: Milvus answers. 503 + Retry-After when it does not."""
        version = state.store.ping()
        caps = state.store.capabilities
        return Ready(
            status="ready",
            backend=caps.backend,
            server_version=version,
            grouping="native" if caps.native_grouping else "overfetch",
        )

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics() -> Response:
        """Prometheus exposition of this app's registry."""
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---- search ----

    async def _binding() -> Binding:
        # a fresh cached binding costs nothing; refreshing it calls Milvus, so off the loop
        return state.store.cached_binding() or await run_in_threadpool(state.store.require_binding)

    async def _search(binding: Binding, vectors: Any, top_k: int, expr: str, min_score: float | None) -> tuple[list[list[ProductHit]], str]:
        if settings.async_search:
            return await state.store.search_async(binding, vectors, top_k=top_k, expr=expr, min_score=min_score)
        return await run_in_threadpool(
            lambda: state.store.search(binding, vectors, top_k=top_k, expr=expr, min_score=min_score)
        )

    @app.post("/v1/search", response_model=SearchResponse, tags=["search"])
    async def search(body: SearchRequest, _: Principal = Depends(require_search)) -> SearchResponse:
        """Distinct products nearest to one vector, best-matching image per product."""
        t0 = time.perf_counter()
        binding = await _binding()
        _check_model(binding, body.model_id)
        vector = decode_vector(body.vector, body.encoding, binding.dim)
        expr = build_filter(body.filters)
        hits, grouping = await _search(binding, vector[None, :], body.top_k, expr, body.min_score)
        took = time.perf_counter() - t0
        state.metrics.search_seconds.labels(kind="single", grouping=grouping).observe(took)
        if state.query_log is not None:
            state.query_log.record(binding.model_id, body.encoding.value, [body.vector], [[h.product_id for h in hits[0]]])
        return SearchResponse(model_id=binding.model_id, hits=hits[0], grouping=grouping, took_ms=took * 1000)

    @app.post("/v1/search/batch", response_model=BatchSearchResponse, tags=["search"])
    async def search_batch(body: BatchSearchRequest, principal: Principal = Depends(require_search)) -> BatchSearchResponse:
        """Several vectors (one per detected object), one Milvus round trip (nq > 1)."""
        t0 = time.perf_counter()
        # each extra vector costs a token: a batch is not a way around the rate limit
        if len(body.vectors) > 1:
            state.limiter.take(principal.key_id, cost=len(body.vectors) - 1)
        binding = await _binding()
        _check_model(binding, body.model_id)
        vectors = decode_batch(body.vectors, body.encoding, binding.dim)
        expr = build_filter(body.filters)
        results, grouping = await _search(binding, vectors, body.top_k, expr, body.min_score)
        took = time.perf_counter() - t0
        state.metrics.search_seconds.labels(kind="batch", grouping=grouping).observe(took)
        if state.query_log is not None:
            state.query_log.record(binding.model_id, body.encoding.value, body.vectors, [[h.product_id for h in r] for r in results])
        return BatchSearchResponse(
            model_id=binding.model_id,
            results=[ObjectResults(index=i, hits=h) for i, h in enumerate(results)],
            grouping=grouping,
            took_ms=took * 1000,
        )

    # ---- catalog ----

    def _write_target(model_id: str, collection: str | None) -> Binding:
        if collection:
            target = state.store.collection_binding(collection)
            _check_model(target, model_id, f"collection {collection!r}")
            return target
        binding = state.store.binding()
        if binding is None:
            with state.create_lock:  # two first upserts must not create two collections
                binding = state.store.binding(refresh=True) or state.store.create_collection(model_id, activate=True)
        _check_model(binding, model_id)
        return binding

    @app.put("/v1/catalog/images", response_model=UpsertResponse, tags=["catalog"])
    def upsert_images(
        body: UpsertRequest,
        collection: str | None = Query(
            default=None, description="write into this (staging) collection instead of the served one; see reindex"
        ),
        _: Principal = Depends(require_admin),
    ) -> UpsertResponse:
        """Insert or replace images by image_id (idempotent). The first upsert creates the collection
        for the request's model_id and binds the alias to it."""
        target = _write_target(body.model_id, collection)
        n = state.store.upsert(target, body.images)
        if state.store.lite and not collection:
            warning = state.lite_warning(state.store.count(target))
            if warning and not state.lite_warned:
                log.warning(warning)
                state.lite_warned = True
        return UpsertResponse(upserted=n, model_id=target.model_id)

    @app.post("/v1/catalog/flush", response_model=Flushed, tags=["catalog"])
    def flush(
        collection: str | None = Query(default=None, description="flush this (staging) collection instead of the served one"),
        _: Principal = Depends(require_admin),
    ) -> Flushed:
        """Seal recent writes so they get indexed: call once at the end of a bulk import (searches
        over freshly written rows are brute force until then, which Milvus Lite feels most)."""
        target = state.store.collection_binding(collection) if collection else state.store.require_binding()
        state.store.flush(target)
        return Flushed(collection=target.collection, rows=state.store.count(target))

    @app.delete("/v1/catalog/images/{image_id}", response_model=DeleteResult, tags=["catalog"])
    def delete_image(image_id: str, _: Principal = Depends(require_admin)) -> DeleteResult:
        binding = state.store.require_binding()
        if not state.store.delete_image(binding, image_id):
            raise ApiError(ErrorCode.NOT_FOUND, f"no image {image_id!r} in the catalog")
        return DeleteResult(deleted=1)

    @app.delete("/v1/catalog/products/{product_id}", response_model=DeleteResult, tags=["catalog"])
    def delete_product(product_id: str, _: Principal = Depends(require_admin)) -> DeleteResult:
        binding = state.store.require_binding()
        n = state.store.delete_product(binding, product_id)
        if n == 0:
            raise ApiError(ErrorCode.NOT_FOUND, f"no product {product_id!r} in the catalog")
        return DeleteResult(deleted=n)

    @app.get("/v1/catalog/products/{product_id}", response_model=ProductImages, tags=["catalog"])
    def get_product(product_id: str, _: Principal = Depends(require_search)) -> ProductImages:
        binding = state.store.require_binding()
        images = state.store.product_images(binding, product_id)
        if not images:
            raise ApiError(ErrorCode.NOT_FOUND, f"no product {product_id!r} in the catalog")
        return ProductImages(product_id=product_id, model_id=binding.model_id, images=images)

    # ---- collections (model binding, reindex) ----

    @app.get("/v1/catalog/collections", response_model=list[CollectionInfo], tags=["admin"])
    def list_collections(_: Principal = Depends(require_admin)) -> list[CollectionInfo]:
        return [CollectionInfo(**c) for c in state.store.collections()]

    @app.post("/v1/catalog/collections", response_model=CollectionInfo, status_code=201, tags=["admin"])
    def create_collection(body: CreateCollection, _: Principal = Depends(require_admin)) -> CollectionInfo:
        """A new empty collection bound to ``model_id`` (dim from the id). It is served at once if
        ``activate`` or if nothing is served yet; otherwise fill it with
        ``PUT /v1/catalog/images?collection=...`` and activate it."""
        with state.create_lock:
            b = state.store.create_collection(body.model_id, activate=body.activate)
        current = state.store.binding(refresh=True)
        return CollectionInfo(
            collection=b.collection, model_id=b.model_id, dim=b.dim, vector_storage=b.storage,
            active=current is not None and current.collection == b.collection,
        )

    @app.post("/v1/catalog/collections/{name}/activate", response_model=CollectionInfo, tags=["admin"])
    def activate_collection(name: str, _: Principal = Depends(require_admin)) -> CollectionInfo:
        """Swap the alias to this collection (atomic); the previous one is kept until deleted."""
        b = state.store.activate(name)
        return CollectionInfo(collection=b.collection, model_id=b.model_id, dim=b.dim, vector_storage=b.storage, active=True)

    @app.delete("/v1/catalog/collections/{name}", response_model=DeleteResult, tags=["admin"])
    def drop_collection(name: str, _: Principal = Depends(require_admin)) -> DeleteResult:
        """Drop a collection that is not being served (e.g. the old model after a reindex)."""
        state.store.drop_collection(name)
        return DeleteResult(deleted=1)

    # ---- introspection ----

    @app.get("/v1/models", response_model=Models, tags=["search"])
    def models(_: Principal = Depends(require_search)) -> Models:
        """The model id the catalog is served for (a phone must embed with it) and any staged ones."""
        current = state.store.binding(refresh=True)
        infos = [
            ModelInfo(model_id=c["model_id"], dim=c["dim"], metric="COSINE", collection=c["collection"], active=c["active"])
            for c in state.store.collections()
        ]
        infos.sort(key=lambda m: not m.active)
        if current is not None and not any(m.active for m in infos):  # an alias set up outside shoplens
            infos.insert(0, ModelInfo(model_id=current.model_id, dim=current.dim, metric=current.metric,
                                      collection=current.collection, active=True))
        return Models(alias=state.store.alias, models=infos)

    @app.get("/v1/stats", response_model=Stats, tags=["ops"])
    def stats(_: Principal = Depends(require_admin)) -> Stats:
        """Rows served, backend facts, and warnings (e.g. a Lite file grown too big)."""
        caps = state.store.capabilities
        binding = state.store.binding(refresh=True)
        rows = state.store.count(binding) if binding else 0
        state.metrics.catalog_rows.set(rows)
        segment_rows = state.store.segment_rows(binding) if binding else None
        warnings = [w for w in (state.lite_warning(rows), state.store.storage_problem(settings.vector_storage),
                                state.segment_warning(segment_rows)) if w]
        return Stats(
            alias=state.store.alias,
            backend=caps.backend,
            server_version=caps.server_version,
            grouping="native" if caps.native_grouping else "overfetch",
            model_id=binding.model_id if binding else None,
            collection=binding.collection if binding else None,
            vector_storage=binding.storage if binding else None,
            rows=rows,
            segments=None if segment_rows is None else len(segment_rows),
            warnings=warnings,
        )

    # The last added is outermost: metrics see every answer, including the 413s of the body cap.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
