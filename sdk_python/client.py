"""``ShoplensClient`` / ``AsyncShoplensClient``: a small, obvious HTTP client for the search service.

What it adds over raw httpx, and why:
- vectors are encoded with the contract's codecs (never re-implemented here);
- every call is retried on connect errors, timeouts, 429 (honouring
  ``Retry-After``) and 502/503/504 with capped exponential backoff: all
  shoplens calls are idempotent (search reads; upsert is keyed by image id;
  deletes are deletes), and writes carry an ``Idempotency-Key`` that stays the
  same across the retries of one call, so a retry of a write that did succeed
  gets the service's first answer replayed (a 409 ``idempotency_conflict``,
  the first attempt still running, is retried too);
- errors come back as typed exceptions carrying the service's error code.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import httpx
import numpy as np

from shoplens.contract.codecs import Encoding, encode_vector
from shoplens.contract.errors import ErrorCode
from shoplens.contract.service import (
    CollectionInfo,
    CreateCollection,
    DeleteResult,
    Flushed,
    Health,
    ModelChange,
    ModelInfo,
    Models,
    ProductImages,
    Ready,
    Stats,
)
from shoplens.contract.feedback import FeedbackResult, SightingInfo, SightingList, SightingStatus
from shoplens.contract.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    CatalogImage,
    FeedbackRequest,
    SearchFilters,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResponse,
)
from shoplens.sdk.errors import NetworkError, ServiceUnavailableError, ShoplensAPIError, error_for_status, warn_deprecated

if TYPE_CHECKING:
    from shoplens.sdk.offline_queue import OfflineQueue, QueuedConfirmation

RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Total wait is bounded by ``max_retries`` x ``max_delay``."""

    max_retries: int = 3
    base_delay: float = 0.2
    max_delay: float = 10.0  # also the cap on an honoured Retry-After

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        backoff = min(self.base_delay * (2**attempt), self.max_delay)
        return backoff * (0.5 + random.random() / 2)  # jitter: clients that failed together don't retry together


@dataclass
class _Request:
    method: str
    path: str
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _retryable(response: httpx.Response) -> bool:
    if response.status_code in RETRY_STATUSES:
        return True
    # 409 idempotency_conflict: an earlier attempt of this write (same Idempotency-Key) is still
    # running on the service; a retry after Retry-After gets its answer replayed
    if response.status_code == 409:
        try:
            return response.json()["error"]["code"] == ErrorCode.IDEMPOTENCY_CONFLICT.value
        except (ValueError, KeyError, TypeError):
            return False
    return False


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        err = response.json()["error"]
        code, message, details = ErrorCode(err["code"]), err["message"], err.get("details")
    except (ValueError, KeyError, TypeError):
        code = ErrorCode.INTERNAL if response.status_code >= 500 else ErrorCode.VALIDATION_ERROR
        message, details = f"HTTP {response.status_code}: {response.text[:200]}", None
    raise error_for_status(response.status_code, code, message, details, _retry_after(response))


class _Attempts:
    """The retry decision shared by the sync and async clients: returns the delay, or re-raises."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.attempt = 0

    def after_response(self, response: httpx.Response) -> float | None:
        """None: the response is final (success or a non-retryable error raised here)."""
        if _retryable(response) and self.attempt < self.policy.max_retries:
            self.attempt += 1
            return self.policy.delay(self.attempt - 1, _retry_after(response))
        _raise_for_error(response)
        return None

    def after_exception(self, exc: httpx.TransportError, url: str) -> float:
        if self.attempt < self.policy.max_retries:
            self.attempt += 1
            return self.policy.delay(self.attempt - 1, None)
        raise NetworkError(f"cannot reach {url} after {self.attempt + 1} attempt(s): {type(exc).__name__}: {exc}") from exc


def _vectors_payload(vectors: Iterable[np.ndarray | str], encoding: Encoding, dim: int | None) -> list[str]:
    return [v if isinstance(v, str) else encode_vector(np.asarray(v), encoding, dim) for v in vectors]


class _ClientBase:
    """Request building shared by both clients: bodies come from the contract's models."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float, retry: RetryPolicy) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self._headers = {"User-Agent": "shoplens-sdk"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0))
        self._deprecation_warned: set[str] = set()
        self._statuses: dict[str, ModelInfo | None] = {}

    def _note_deprecation(self, req: _Request, response: httpx.Response) -> None:
        """A search answered with a ``Deprecation`` header: warn once per model id (ModelDeprecatedWarning)."""
        if "deprecation" not in response.headers or not isinstance(req.body, dict):
            return
        model_id = str(req.body.get("model_id") or "")
        if model_id and model_id not in self._deprecation_warned:
            self._deprecation_warned.add(model_id)
            warn_deprecated(model_id, sunset=response.headers.get("sunset", ""))

    def _status_of(self, models: Models, model_id: str) -> ModelInfo | None:
        """``model_id``'s entry in /v1/models (None: not served here); warns or raises on its status."""
        mine = next((m for m in models.models if m.model_id == model_id), None)
        self._statuses[model_id] = mine
        if mine is not None and mine.status == "deprecated" and model_id not in self._deprecation_warned:
            self._deprecation_warned.add(model_id)
            current = next((m for m in models.models if m.active), None)
            warn_deprecated(model_id, sunset=mine.sunset or "", current_model_id=current.model_id if current else None,
                            bundle_url=current.bundle_url if current else None)
        return mine

    @staticmethod
    def _search(vector: np.ndarray | str, model_id: str, encoding: str | Encoding, top_k: int, filters: SearchFilters | dict | None, min_score: float | None, dim: int | None) -> _Request:
        enc = Encoding(encoding)
        body = SearchRequest(model_id=model_id, encoding=enc, vector=_vectors_payload([vector], enc, dim)[0], top_k=top_k, filters=filters, min_score=min_score)
        return _Request("POST", "/v1/search", body.model_dump(mode="json", exclude_none=True))

    @staticmethod
    def _search_batch(vectors: Iterable[np.ndarray | str], model_id: str, encoding: str | Encoding, top_k: int, filters: SearchFilters | dict | None, min_score: float | None, dim: int | None) -> _Request:
        enc = Encoding(encoding)
        body = BatchSearchRequest(model_id=model_id, encoding=enc, vectors=_vectors_payload(vectors, enc, dim), top_k=top_k, filters=filters, min_score=min_score)
        return _Request("POST", "/v1/search/batch", body.model_dump(mode="json", exclude_none=True))

    @staticmethod
    def _upsert(model_id: str, images: list[CatalogImage | dict], idempotency_key: str | None, collection: str | None = None) -> _Request:
        body = UpsertRequest(model_id=model_id, images=images)
        path = "/v1/catalog/images" + (f"?collection={_quote(collection)}" if collection else "")
        return _Request("PUT", path, body.model_dump(mode="json", exclude_none=True), {"Idempotency-Key": idempotency_key or str(uuid.uuid4())})

    @staticmethod
    def _confirm(vector: np.ndarray | str, product_id: str, model_id: str, encoding: str | Encoding, dim: int | None,
                 idempotency_key: str | None) -> _Request:
        enc = Encoding(encoding)
        body = FeedbackRequest(model_id=model_id, encoding=enc, vector=_vectors_payload([vector], enc, dim)[0], product_id=product_id)
        return _Request("POST", "/v1/feedback", body.model_dump(mode="json"), {"Idempotency-Key": idempotency_key or str(uuid.uuid4())})

    @staticmethod
    def _queue_confirmation(req: _Request, offline_queue: OfflineQueue | None, exc: Exception) -> QueuedConfirmation:
        """A confirmation the service could not be reached for: queued with its Idempotency-Key (so a
        first attempt that did arrive is replayed, not counted again), or ``exc`` again without a queue."""
        if offline_queue is None:
            raise exc
        assert req.body is not None
        return offline_queue.enqueue_confirmation(req.body["vector"], product_id=req.body["product_id"], model_id=req.body["model_id"],
                                                  encoding=req.body["encoding"], idempotency_key=req.headers["Idempotency-Key"])

    @staticmethod
    def _sightings_path(path: str, model_id: str | None, **query: str | None) -> str:
        from urllib.parse import urlencode

        params = {k: v for k, v in {"model_id": model_id, **query}.items() if v is not None}
        return path + (f"?{urlencode(params)}" if params else "")

    @staticmethod
    def _flush(collection: str | None) -> _Request:
        return _Request("POST", "/v1/catalog/flush" + (f"?collection={_quote(collection)}" if collection else ""))

    @staticmethod
    def _delete(path: str, idempotency_key: str | None) -> _Request:
        return _Request("DELETE", path, None, {"Idempotency-Key": idempotency_key or str(uuid.uuid4())})


class ShoplensClient(_ClientBase):
    """Synchronous client. Use as a context manager, or call ``close()``.

    >>> with ShoplensClient("http://127.0.0.1:8000", api_key="device-key") as c:
    ...     hits = c.search(vector, model_id=manifest.embedder.model_id).hits
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 10.0, retry: RetryPolicy = RetryPolicy(), transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout, retry)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self._timeout, transport=transport)

    def __enter__(self) -> "ShoplensClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, req: _Request) -> Any:
        attempts = _Attempts(self.retry)
        while True:
            try:
                response = self._http.request(req.method, req.path, json=req.body, headers=req.headers)
            except httpx.TransportError as exc:
                time.sleep(attempts.after_exception(exc, self.base_url + req.path))
                continue
            delay = attempts.after_response(response)
            if delay is None:
                self._note_deprecation(req, response)
                return response.json() if response.content else None
            time.sleep(delay)

    # ---- search ------------------------------------------------------------
    def search(self, vector: np.ndarray | str, *, model_id: str, encoding: str | Encoding = Encoding.I8, top_k: int = 10, filters: SearchFilters | dict | None = None, min_score: float | None = None, dim: int | None = None) -> SearchResponse:
        """Search one vector (a numpy embedding, or an already encoded base64 string)."""
        return SearchResponse.model_validate(self._send(self._search(vector, model_id, encoding, top_k, filters, min_score, dim)))

    def search_batch(self, vectors: Iterable[np.ndarray | str], *, model_id: str, encoding: str | Encoding = Encoding.I8, top_k: int = 10, filters: SearchFilters | dict | None = None, min_score: float | None = None, dim: int | None = None) -> BatchSearchResponse:
        """Search every object of one photo in one round trip (<= 16 vectors)."""
        return BatchSearchResponse.model_validate(self._send(self._search_batch(vectors, model_id, encoding, top_k, filters, min_score, dim)))

    # ---- confirmed sightings ----------------------------------------------
    def confirm(self, vector: np.ndarray | str, *, product_id: str, model_id: str, encoding: str | Encoding = Encoding.I8,
                dim: int | None = None, idempotency_key: str | None = None,
                offline_queue: OfflineQueue | None = None) -> FeedbackResult | QueuedConfirmation:
        """The shopper confirmed ``product_id`` for ``vector`` (the vector this device searched with; never
        a photo). With ``offline_queue``, a confirmation the service cannot be reached for is queued and
        returned as a ``QueuedConfirmation``; ``OfflineQueue.replay`` sends it later."""
        req = self._confirm(vector, product_id, model_id, encoding, dim, idempotency_key)
        try:
            return FeedbackResult.model_validate(self._send(req))
        except (NetworkError, ServiceUnavailableError) as exc:
            return self._queue_confirmation(req, offline_queue, exc)

    def sightings(self, *, model_id: str | None = None, product_id: str | None = None,
                  status: SightingStatus | str | None = None) -> SightingList:
        """Confirmations and promoted sightings (admin); ``model_id`` default: the current model."""
        path = self._sightings_path("/v1/catalog/sightings", model_id, product_id=product_id,
                                    status=SightingStatus(status).value if status else None)
        return SightingList.model_validate(self._send(_Request("GET", path)))

    def approve_sighting(self, sighting_id: str, *, model_id: str | None = None) -> SightingInfo:
        path = self._sightings_path(f"/v1/catalog/sightings/{_quote(sighting_id)}/approve", model_id)
        return SightingInfo.model_validate(self._send(_Request("POST", path, None, {"Idempotency-Key": str(uuid.uuid4())})))

    def reject_sighting(self, sighting_id: str, *, model_id: str | None = None) -> SightingInfo:
        path = self._sightings_path(f"/v1/catalog/sightings/{_quote(sighting_id)}/reject", model_id)
        return SightingInfo.model_validate(self._send(_Request("POST", path, None, {"Idempotency-Key": str(uuid.uuid4())})))

    def remove_sighting(self, sighting_id: str, *, model_id: str | None = None) -> SightingInfo:
        """Delete a sighting; a promoted one leaves the catalog (and search) too."""
        path = self._sightings_path(f"/v1/catalog/sightings/{_quote(sighting_id)}", model_id)
        return SightingInfo.model_validate(self._send(self._delete(path, None)))

    # ---- catalog admin -----------------------------------------------------
    def upsert_images(self, model_id: str, images: list[CatalogImage | dict], *, idempotency_key: str | None = None,
                      collection: str | None = None) -> UpsertResponse:
        """Insert or replace images; ``collection``: a staging collection instead of the served one."""
        return UpsertResponse.model_validate(self._send(self._upsert(model_id, images, idempotency_key, collection)))

    # ---- collections (re-index) -------------------------------------------
    def collections(self) -> list[CollectionInfo]:
        return [CollectionInfo.model_validate(c) for c in self._send(_Request("GET", "/v1/catalog/collections"))]

    def create_collection(self, model_id: str, *, activate: bool = False) -> CollectionInfo:
        body = CreateCollection(model_id=model_id, activate=activate).model_dump(mode="json")
        return CollectionInfo.model_validate(self._send(_Request("POST", "/v1/catalog/collections", body, {"Idempotency-Key": str(uuid.uuid4())})))

    def activate_collection(self, name: str, *, promote: bool = True) -> CollectionInfo:
        """Serve collection ``name`` for its model id; ``promote``: as the current model."""
        path = f"/v1/catalog/collections/{_quote(name)}/activate?promote={'true' if promote else 'false'}"
        return CollectionInfo.model_validate(self._send(_Request("POST", path, None, {"Idempotency-Key": str(uuid.uuid4())})))

    def change_model(self, model_id: str, action: str, *, sunset: str | None = None, bundle_url: str | None = None) -> ModelInfo:
        """``promote``, ``support``, ``deprecate`` (with ``sunset``, YYYY-MM-DD) or ``retire`` a model id."""
        body = ModelChange(sunset=sunset, bundle_url=bundle_url).model_dump(mode="json", exclude_none=True)
        path = f"/v1/models/{_quote(model_id)}/{_quote(action)}"
        return ModelInfo.model_validate(self._send(_Request("POST", path, body, {"Idempotency-Key": str(uuid.uuid4())})))

    def drop_collection(self, name: str) -> DeleteResult:
        return DeleteResult.model_validate(self._send(self._delete(f"/v1/catalog/collections/{_quote(name)}", None)))

    def flush(self, collection: str | None = None) -> Flushed:
        """Seal recent writes so the index covers them at once (e.g. at the end of a bulk import)."""
        return Flushed.model_validate(self._send(self._flush(collection)))

    def delete_image(self, image_id: str, *, idempotency_key: str | None = None) -> DeleteResult:
        return DeleteResult.model_validate(self._send(self._delete(f"/v1/catalog/images/{_quote(image_id)}", idempotency_key)))

    def delete_product(self, product_id: str, *, idempotency_key: str | None = None) -> DeleteResult:
        return DeleteResult.model_validate(self._send(self._delete(f"/v1/catalog/products/{_quote(product_id)}", idempotency_key)))

    def get_product(self, product_id: str) -> ProductImages:
        return ProductImages.model_validate(self._send(_Request("GET", f"/v1/catalog/products/{_quote(product_id)}")))

    # ---- service -----------------------------------------------------------
    def models(self) -> Models:
        return Models.model_validate(self._send(_Request("GET", "/v1/models")))

    def model_status(self, model_id: str, *, refresh: bool = False) -> ModelInfo | None:
        """How the service serves ``model_id`` (read once per client from /v1/models; None: not served).

        Warns :class:`ModelDeprecatedWarning` (with the sunset date and the model to move to) when it
        is deprecated; its ``status`` is "retired" when searches would get 410.
        """
        if refresh or model_id not in self._statuses:
            return self._status_of(self.models(), model_id)
        return self._statuses[model_id]

    def stats(self) -> Stats:
        return Stats.model_validate(self._send(_Request("GET", "/v1/stats")))

    def health(self) -> Health:
        return Health.model_validate(self._send(_Request("GET", "/v1/health")))

    def ready(self) -> Ready:
        return Ready.model_validate(self._send(_Request("GET", "/v1/ready")))


class AsyncShoplensClient(_ClientBase):
    """The same calls, awaitable (for apps that search many photos at once)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 10.0, retry: RetryPolicy = RetryPolicy(), transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout, retry)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=self._timeout, transport=transport)

    async def __aenter__(self) -> "AsyncShoplensClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, req: _Request) -> Any:
        attempts = _Attempts(self.retry)
        while True:
            try:
                response = await self._http.request(req.method, req.path, json=req.body, headers=req.headers)
            except httpx.TransportError as exc:
                await asyncio.sleep(attempts.after_exception(exc, self.base_url + req.path))
                continue
            delay = attempts.after_response(response)
            if delay is None:
                self._note_deprecation(req, response)
                return response.json() if response.content else None
            await asyncio.sleep(delay)

    async def search(self, vector: np.ndarray | str, *, model_id: str, encoding: str | Encoding = Encoding.I8, top_k: int = 10, filters: SearchFilters | dict | None = None, min_score: float | None = None, dim: int | None = None) -> SearchResponse:
        return SearchResponse.model_validate(await self._send(self._search(vector, model_id, encoding, top_k, filters, min_score, dim)))

    async def search_batch(self, vectors: Iterable[np.ndarray | str], *, model_id: str, encoding: str | Encoding = Encoding.I8, top_k: int = 10, filters: SearchFilters | dict | None = None, min_score: float | None = None, dim: int | None = None) -> BatchSearchResponse:
        return BatchSearchResponse.model_validate(await self._send(self._search_batch(vectors, model_id, encoding, top_k, filters, min_score, dim)))

    async def confirm(self, vector: np.ndarray | str, *, product_id: str, model_id: str, encoding: str | Encoding = Encoding.I8,
                      dim: int | None = None, idempotency_key: str | None = None,
                      offline_queue: OfflineQueue | None = None) -> FeedbackResult | QueuedConfirmation:
        """``ShoplensClient.confirm``, awaitable."""
        req = self._confirm(vector, product_id, model_id, encoding, dim, idempotency_key)
        try:
            return FeedbackResult.model_validate(await self._send(req))
        except (NetworkError, ServiceUnavailableError) as exc:
            return self._queue_confirmation(req, offline_queue, exc)

    async def upsert_images(self, model_id: str, images: list[CatalogImage | dict], *, idempotency_key: str | None = None) -> UpsertResponse:
        return UpsertResponse.model_validate(await self._send(self._upsert(model_id, images, idempotency_key)))

    async def flush(self, collection: str | None = None) -> Flushed:
        return Flushed.model_validate(await self._send(self._flush(collection)))

    async def delete_image(self, image_id: str, *, idempotency_key: str | None = None) -> DeleteResult:
        return DeleteResult.model_validate(await self._send(self._delete(f"/v1/catalog/images/{_quote(image_id)}", idempotency_key)))

    async def delete_product(self, product_id: str, *, idempotency_key: str | None = None) -> DeleteResult:
        return DeleteResult.model_validate(await self._send(self._delete(f"/v1/catalog/products/{_quote(product_id)}", idempotency_key)))

    async def get_product(self, product_id: str) -> ProductImages:
        return ProductImages.model_validate(await self._send(_Request("GET", f"/v1/catalog/products/{_quote(product_id)}")))

    async def models(self) -> Models:
        return Models.model_validate(await self._send(_Request("GET", "/v1/models")))

    async def model_status(self, model_id: str, *, refresh: bool = False) -> ModelInfo | None:
        """``ShoplensClient.model_status``, awaitable."""
        if refresh or model_id not in self._statuses:
            return self._status_of(await self.models(), model_id)
        return self._statuses[model_id]

    async def stats(self) -> Stats:
        return Stats.model_validate(await self._send(_Request("GET", "/v1/stats")))

    async def health(self) -> Health:
        return Health.model_validate(await self._send(_Request("GET", "/v1/health")))

    async def ready(self) -> Ready:
        return Ready.model_validate(await self._send(_Request("GET", "/v1/ready")))


def _quote(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="")


__all__ = ["AsyncShoplensClient", "RetryPolicy", "ShoplensAPIError", "ShoplensClient"]
