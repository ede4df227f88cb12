"""Probes and metrics: liveness, readiness, Prometheus, and the admin's view of the catalog."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from shoplens.contract.service import Health, Ready, Stats

from shoplens.cloud.auth import Principal
from shoplens.cloud.state import require_admin, service_state

router = APIRouter(tags=["ops"])


@router.get("/v1/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process answers (touches neither Milvus nor the thread pool)."""
    return Health()


@router.get("/v1/ready", response_model=Ready)
def ready(request: Request) -> Ready:
    """Readiness: Milvus answers and the served collection is loaded. 503 + Retry-After until then."""
    store = service_state(request).store
    version = store.ping()
    store.binding()  # waits for the load at most load_wait_s, then 503 (CollectionNotReady)
    caps = store.capabilities
    return Ready(status="ready", backend=caps.backend, server_version=version,
                 grouping="native" if caps.native_grouping else "overfetch")


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus exposition of this app's registry."""
    return Response(service_state(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/stats", response_model=Stats)
def stats(request: Request, _: Principal = Depends(require_admin)) -> Stats:
    """Rows served, backend facts, and warnings (e.g. a Lite file grown too big)."""
    state = service_state(request)
    store = state.store
    caps = store.capabilities
    binding = store.binding(refresh=True)
    rows = store.count(binding) if binding else 0
    state.metrics.catalog_rows.set(rows)
    segment_rows = store.segment_rows(binding) if binding else None
    warnings = [w for w in (state.lite_warning(rows), store.storage_problem(state.settings.vector_storage),
                            state.segment_warning(segment_rows)) if w]
    return Stats(
        alias=store.alias,
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
