"""The FastAPI app factory: one :class:`ServiceState`, the route modules, the middleware stack.

``create_app(settings)`` builds an independent app (own store, registry,
rate limiter), so tests and benchmarks can run several side by side and
``shoplens serve`` is a thin uvicorn wrapper around it. Routes live in
``cloud/routes/`` by audience; blocking Milvus calls run in Starlette's thread
pool (plain ``def`` routes), searches on pymilvus' asyncio client.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from shoplens import __version__
from shoplens.contract.schemas import ErrorResponse
from shoplens.settings import Settings, get_settings

from shoplens.cloud.errors import install_error_handlers
from shoplens.cloud.idempotency import IdempotencyMiddleware
from shoplens.cloud.limits import BodyLimitMiddleware
from shoplens.cloud.metrics_middleware import MetricsMiddleware
from shoplens.cloud.query_keys import QueryKeyGuard
from shoplens.cloud.routes import admin, catalog, device_page, feedback, ops, search
from shoplens.cloud.state import ServiceState
from shoplens.cloud.store_errors import StoreError

log = logging.getLogger("shoplens.cloud")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 422, 429, 503)
}


def _lifespan(state: ServiceState):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not state.keys.has_admin:
            log.warning("no admin key configured (SHOPLENS_ADMIN_KEYS): catalog writes are refused")
        state.store.reopen()
        try:
            version = state.store.ping()
            log.info("Milvus ready: %s at %s", version, "Lite file" if state.store.lite else "server")
            threading.Thread(target=state.warm_up, name="shoplens-warm-up", daemon=True).start()
        except StoreError:
            log.warning("Milvus not reachable at startup; /v1/ready answers 503 until it is")
        state.flusher.start()
        yield
        await state.flusher.stop()
        await state.store.aclose()
        state.store.close()

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new service instance; ``settings`` default to the environment (``SHOPLENS_*``)."""
    settings = settings or get_settings()
    state = ServiceState(settings)
    app = FastAPI(
        title="shoplens cloud search",
        version=__version__,
        description="Search a product catalog by image embedding. Vectors only: photos never leave the phone.",
        lifespan=_lifespan(state),
        responses=_ERRORS,
    )
    app.state.shoplens = state
    install_error_handlers(app)
    for module in (ops, search, catalog, admin, feedback):
        app.include_router(module.router)
    device_page.install(app)  # /app: the browser device page, and /docs from local assets (no CDN)
    # The last added is outermost: metrics see every answer, including the 413s of the body cap;
    # idempotency buffers bodies only inside the cap; keys in URLs are refused before any body is read.
    app.add_middleware(IdempotencyMiddleware, settings=settings)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(QueryKeyGuard)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
