"""What one service instance owns (store, keys, limits, metrics, flusher), and the request dependencies on it.

Routes reach the state through ``request.app.state.shoplens``, so several apps
(tests, benchmarks) can run side by side in one process.
"""

from __future__ import annotations

import logging
import statistics
import threading
from collections.abc import Awaitable, Callable

from fastapi import Request

from shoplens.contract.errors import ErrorCode
from shoplens.settings import Settings

from shoplens.cloud.auth import KeyRing, Principal, Role
from shoplens.cloud.errors import ApiError
from shoplens.cloud.flusher import AutoFlusher
from shoplens.cloud.metrics import Metrics
from shoplens.cloud.query_log import QueryLog
from shoplens.cloud.shared_limits import limiter_for
from shoplens.cloud.sighting_rule import Rule
from shoplens.cloud.sightings import Sightings
from shoplens.cloud.store import Binding, CatalogStore
from shoplens.cloud.store_errors import StoreError

log = logging.getLogger("shoplens.cloud")


class ServiceState:
    """Everything one app instance owns."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = CatalogStore(settings, observe=self.metrics.observe_milvus)
        self.keys = KeyRing(settings)
        self.limiter = limiter_for(settings, "requests", settings.rate_limit_per_s, settings.rate_limit_burst)
        self.create_lock = threading.Lock()
        self.lite_warned = False
        self.query_log = QueryLog(settings.query_log, settings.query_log_max_bytes) if settings.query_log else None
        self.flusher = AutoFlusher(self.store.flush_collection, settings.flush_interval_s, settings.flush_rows,
                                   on_change=self.metrics.unflushed_rows.set)
        self.feedback_limiter = limiter_for(settings, "feedback", settings.feedback_rate_per_s, settings.feedback_burst)
        self.sightings = Sightings(self.store, Rule.from_settings(settings), self.metrics, on_write=self.flusher.note_write)

    def warm_up(self) -> None:
        """Load the served collection, then seal what a previous run left unflushed (a crash skips the
        shutdown flush, and searches over unsealed rows are brute force). Runs in a thread at start-up so
        the process answers /v1/health at once; requests meanwhile wait for the load (``load_wait_s``)."""
        try:
            self.store.models(refresh=True)  # the registry first: every load is done before the flush
            binding = self.store.binding(refresh=True)
            if binding is not None:
                self.store.flush(binding)
        except StoreError as exc:
            log.warning("warm-up: %s (requests load the collection on demand)", exc.message)
        except Exception:  # noqa: BLE001 - never kill the service from a background thread
            log.exception("warm-up failed; requests load the collection on demand")

    def model_label(self, model_id: str) -> str:
        """A metrics label for ``model_id``: itself when registered, else one shared value (a client
        must not be able to create unbounded label values)."""
        known = self.store.cached_models()
        return model_id if model_id in known else "unregistered"

    def lite_warning(self, rows: int) -> str | None:
        if not self.store.lite or rows <= self.settings.lite_warn_rows:
            return None
        return (
            f"Milvus Lite holds {rows} rows, past {self.settings.lite_warn_rows} where it stops serving well "
            "(one process, brute-force latency grows with the rows; docs/cloud.md has the measurements). "
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
            "dataCoord.segment.maxSize, dataCoord.segment.sealProportion and dataCoord.segment.maxBinlogFileNumber "
            "before the catalog is built (docs/cloud.md, 'Segment size')."
        )


def service_state(request: Request) -> ServiceState:
    return request.app.state.shoplens  # type: ignore[no-any-return]


def _guard(need: Role) -> Callable[[Request], Awaitable[Principal]]:
    # async on purpose: a sync dependency costs a thread-pool hop per request before the
    # endpoint's own hop to Milvus; authentication and the bucket are CPU-only
    async def dependency(request: Request) -> Principal:
        st = service_state(request)
        principal = st.keys.authenticate(request, need=need)
        st.limiter.take(principal.key_id)
        return principal

    return dependency


require_search = _guard(Role.DEVICE)
require_admin = _guard(Role.ADMIN)


async def require_feedback(request: Request) -> Principal:
    """A device key (never anonymous: every confirmation must count for a key, and public search would
    let any address be a new 'key'), charged one request token and one confirmation token."""
    st = service_state(request)
    principal = st.keys.authenticate(request, need=Role.DEVICE)
    if principal.role is None:
        raise ApiError(ErrorCode.UNAUTHENTICATED, "confirmations need a device key: 'Authorization: Bearer <key>' "
                       "or 'X-API-Key: <key>' (public search does not extend to feedback)",
                       headers={"WWW-Authenticate": "Bearer"})
    st.limiter.take(principal.key_id)
    st.feedback_limiter.take(principal.key_id)
    return principal


def check_model(binding: Binding, model_id: str, what: str = "the catalog") -> None:
    """409 when a vector's model id is not the one ``binding`` holds (vectors of two models never mix)."""
    if model_id != binding.model_id:
        raise ApiError(
            ErrorCode.MODEL_MISMATCH,
            f"vector model id {model_id!r} does not match {what}'s model id {binding.model_id!r}; "
            "update the app's embedder bundle (vectors of different models are not comparable)",
            details={"request_model_id": model_id, "catalog_model_id": binding.model_id},
        )

