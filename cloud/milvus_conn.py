"""One connection to Milvus (Lite file or server) for the service: the clients, backend facts, load state.

Why a class of its own: the HTTP layer should not know whether it talks to a
Lite file or a cluster. This is where backend differences are detected (from
the server version, never assumed), where connection failures become a 503
(``BackendUnavailable``), and where each collection is loaded exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TypeVar

from pymilvus import AsyncMilvusClient, MilvusClient
from pymilvus.client.types import LoadState
from pymilvus.exceptions import MilvusUnavailableException

from shoplens.settings import Settings

from shoplens.cloud.store_errors import BackendUnavailable, CatalogInconsistent, CollectionNotReady, StoreError

log = logging.getLogger("shoplens.cloud.store")

#: how often a load's progress is read while the service waits for it
LOAD_POLL_S = 0.2

Observer = Callable[[str, float], None]
T = TypeVar("T")


@dataclass(frozen=True)
class Capabilities:
    backend: str  # "lite" | "server"
    server_version: str
    native_grouping: bool


def _is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause chain) means "Milvus cannot be reached"."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (MilvusUnavailableException, ConnectionError, TimeoutError)):
            return True
        code = getattr(cur, "code", None)
        if callable(code):  # grpc.RpcError
            try:
                name = getattr(code(), "name", "")
            except Exception:  # noqa: BLE001 - a broken error object is not "unavailable"
                name = ""
            if name in {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}:
                return True
        msg = str(getattr(cur, "message", "") or cur).lower()
        if any(s in msg for s in ("fail connecting", "failed to connect", "connection refused", "unavailable")):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _is_not_loaded(exc: BaseException) -> bool:
    """True when Milvus refused a call because the collection is not loaded (code 101 and its wordings)."""
    if getattr(exc, "code", None) == 101:
        return True
    msg = str(getattr(exc, "message", "") or exc).lower()
    return "not loaded" in msg or "state 'released'" in msg or "collection not loaded" in msg


def parse_server_version(version: str) -> tuple[int, int, int] | None:
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def native_grouping_supported(version: str) -> bool:
    """Grouping search by a VARCHAR field works on Lite and on servers >= 2.4.

    Milvus 2.3.5 accepts ``group_by_field`` and silently ignores it (repeated
    products come back), so an unknown or older version gets the over-fetch path.
    """
    if version.startswith("milvus_lite"):
        return True
    parsed = parse_server_version(version)
    return parsed is not None and parsed >= (2, 4, 0)


class MilvusConnection:
    """Thread-safe owner of one ``MilvusClient`` (pymilvus clients are safe to share) and its asyncio twin."""

    def __init__(self, settings: Settings, observe: Observer | None = None) -> None:
        self.settings = settings
        self.uri = settings.resolved_milvus_uri()
        self.lite = settings.milvus_is_lite
        self.alias = settings.collection
        self._observe = observe or (lambda op, s: None)
        self._client: MilvusClient | None = None
        # the search path's asyncio client: bound to the event loop it was created on
        self._aclient: AsyncMilvusClient | None = None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._caps: Capabilities | None = None
        self._lock = threading.RLock()
        self._loaded: set[str] = set()
        self._loading = threading.Lock()
        self._closed = False

    # ---- connection -------------------------------------------------------------------

    def _connect(self) -> MilvusClient:
        with self._lock:
            if self._client is not None:
                return self._client
            if self._closed:  # a background task (warm-up, flush) outliving the service must not reopen it
                raise BackendUnavailable("the service is shutting down")
            if self.lite:
                if not self.uri.endswith(".db"):
                    raise CatalogInconsistent("a Milvus Lite URI must be a file path ending in .db (SHOPLENS_MILVUS_URI)")
                from pathlib import Path

                Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            token = self.settings.milvus_token.get_secret_value()
            t0 = time.perf_counter()
            try:
                client = MilvusClient(uri=self.uri, token=token, timeout=self.settings.milvus_timeout_s)
                version = str(client.get_server_version())
            except Exception as exc:  # noqa: BLE001 - every connect failure is "unreachable"
                log.warning("cannot connect to Milvus at %s: %s", self._safe_uri(), type(exc).__name__)
                raise BackendUnavailable(f"cannot connect to Milvus ({'Lite file' if self.lite else 'server'})") from None
            finally:
                self._observe("connect", time.perf_counter() - t0)
            self._caps = Capabilities(
                backend="lite" if self.lite else "server",
                server_version=version,
                native_grouping=native_grouping_supported(version),
            )
            log.info(
                "connected to Milvus %s (%s); grouping: %s",
                version,
                self._caps.backend,
                "native" if self._caps.native_grouping else "overfetch",
            )
            self._client = client
            return client

    def _safe_uri(self) -> str:
        return self.uri if self.lite else re.sub(r"//[^@/]*@", "//***@", self.uri)

    @contextmanager
    def _guarded(self, op: str) -> Iterator[None]:
        """Time the block as ``op``; turn "cannot reach Milvus" into a 503 (either client)."""
        t0 = time.perf_counter()
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            if _is_unavailable(exc):
                log.warning("Milvus unreachable during %s: %s", op, type(exc).__name__)
                raise BackendUnavailable() from None
            raise
        finally:
            self._observe(op, time.perf_counter() - t0)

    @contextmanager
    def _call(self, op: str) -> Iterator[MilvusClient]:
        """Yield the sync client inside ``_guarded(op)``."""
        client = self._connect()
        with self._guarded(op):
            yield client

    async def _async_client(self) -> AsyncMilvusClient:
        """The asyncio client of the running loop (created on first use in that loop).

        Why a second client: a sync pymilvus call from an async endpoint must hop to
        the thread pool and back (15-20% of the service's CPU per search, profiled in
        benchmarks/http_overhead.py); grpc.aio awaits the reply on the loop itself.
        Its channel belongs to one loop, so a new loop (tests, a restarted server)
        gets a new client. Capabilities and the Lite server come from the sync client.
        """
        loop = asyncio.get_running_loop()
        if self._aclient is not None and self._aclient_loop is loop:
            return self._aclient
        self._connect()
        token = self.settings.milvus_token.get_secret_value()
        client = AsyncMilvusClient(uri=self.uri, token=token, timeout=self.settings.milvus_timeout_s)
        self._aclient, self._aclient_loop = client, loop
        return client

    @asynccontextmanager
    async def _acall(self, op: str) -> AsyncIterator[AsyncMilvusClient]:
        """Yield the asyncio client inside ``_guarded(op)`` (creating it is part of the call)."""
        with self._guarded(op):
            yield await self._async_client()

    def _on_collection(self, op: str, collection: str, call: Callable[[MilvusClient], T]) -> T:
        """``call`` on the sync client; when Milvus answers that ``collection`` is not loaded,
        load it again (once, under the load lock) and retry.

        Why: the service's record of what is loaded can be wrong without any fault of its
        own. Milvus Lite was seen reporting a collection this process had loaded as
        'released' right after a restart on the same file, and an operator can release a
        collection on a server. A read or a write then fails until someone reloads it; a
        reload is cheap, so the service does it rather than answering 500s.
        """
        try:
            with self._call(op) as c:
                return call(c)
        except Exception as exc:
            if not _is_not_loaded(exc):
                raise
        self._reload(collection)
        with self._call(op) as c:
            return call(c)

    async def _aon_collection(self, op: str, collection: str, call: Callable[[AsyncMilvusClient], Awaitable[T]]) -> T:
        """``_on_collection`` for the asyncio client (the reload runs in a worker thread)."""
        try:
            async with self._acall(op) as c:
                return await call(c)
        except Exception as exc:
            if not _is_not_loaded(exc):
                raise
        await asyncio.to_thread(self._reload, collection)
        async with self._acall(op) as c:
            return await call(c)

    def _reload(self, collection: str) -> None:
        log.warning("Milvus reports collection %s as not loaded; loading it again", collection)
        with self._lock:
            self._loaded.discard(collection)
        with self._call("load") as c:
            self._ensure_loaded(c, collection)

    async def aclose(self) -> None:
        """Close the asyncio client (call from the loop that used it, before ``close``)."""
        client, self._aclient, self._aclient_loop = self._aclient, None, None
        if client is not None:
            try:
                await client.close()
            except Exception as exc:  # noqa: BLE001 - shutting down: a dead channel is fine
                log.debug("closing the asyncio Milvus client: %s", type(exc).__name__)

    @property
    def capabilities(self) -> Capabilities:
        self._connect()
        assert self._caps is not None
        return self._caps

    def ping(self) -> str:
        """The server version; raises BackendUnavailable when Milvus does not answer."""
        with self._call("ping") as c:
            return str(c.get_server_version())

    def reopen(self) -> None:
        """Allow connecting again after ``close`` (an app whose lifespan starts again, as test clients do)."""
        with self._lock:
            self._closed = False

    def close(self) -> None:
        """Release the client; for Lite also the in-process server, so the file can be reopened."""
        with self._lock:
            client, self._client = self._client, None
            self._closed = True
            self._binding = None
            self._loaded.clear()
        if client is not None:
            try:
                client.close()
            finally:
                if self.lite:
                    from milvus_lite.server_manager import server_manager_instance

                    server_manager_instance.release_server(self.uri)

    def _load_lock(self, name: str) -> threading.Lock:
        """The lock ``name``'s load runs under: one for all collections, so this process never loads
        two at once (Milvus Lite mishandles concurrent loads; loads are rare, serialising costs nothing)."""
        return self._loading

    def _ensure_loaded(self, c: MilvusClient, name: str) -> None:
        """Load once per process under the load lock (one load at a time), then one Strong read.

        Why the lock: two concurrent ``load_collection`` calls on a Lite file left the
        collection released (every read failing, a thread stuck waiting for the load)
        and lost acknowledged writes. Callers that find the load in progress wait at
        most ``load_wait_s``, then get a 503 with Retry-After instead of a thread parked
        for the whole load. The Strong read makes every write acknowledged before this
        process started (by a previous run, or another instance) visible to the
        Session-consistency reads that follow, which only wait for this process's own writes.
        """
        if name in self._loaded:
            return
        lock = self._load_lock(name)
        if not lock.acquire(timeout=self.settings.load_wait_s):
            raise CollectionNotReady(name)
        try:
            if name in self._loaded:
                return
            self._load(c, name)
            self._sync(c, name)
            with self._lock:
                self._loaded.add(name)
            log.info("collection %s loaded", name)
        finally:
            lock.release()

    def _load(self, c: MilvusClient, name: str) -> None:
        """Load ``name`` and wait as long as the load makes progress; a load whose progress has not moved
        for ``load_timeout_s`` is released and issued once more, then the request gets a 503.

        Why progress and not a deadline: a collection of millions of rows takes tens of seconds to load
        (10M rows: 20-50 s on a 2-core server) and must not be released half-way, while a load on a
        Milvus Lite file reopened in the same process was seen stuck forever (pymilvus's own wait
        polls without end)."""
        for attempt in range(2):
            if attempt:
                log.warning("loading %s made no progress for %g s; releasing it and loading again", name, self.settings.load_timeout_s)
                c.release_collection(name, timeout=self.settings.load_timeout_s)
            c.load_collection(name, timeout=self.settings.load_timeout_s, _async=True)
            if self._wait_loaded(c, name):
                return
            if self._closed:  # shutting down: leave the load to the server, do not release it under other instances
                break
        raise CollectionNotReady(name)

    def _wait_loaded(self, c: MilvusClient, name: str) -> bool:
        """True once ``name`` is loaded; False when its load progress stood still for ``load_timeout_s``
        (or this connection was closed meanwhile)."""
        stall_s = self.settings.load_timeout_s
        progress, moved_at = -1, time.monotonic()
        while not self._closed:
            state = c.get_load_state(name, timeout=stall_s)
            if state["state"] == LoadState.Loaded:
                return True
            now = time.monotonic()
            if (latest := state.get("progress", 0)) != progress:
                progress, moved_at = latest, now
                log.info("loading %s: %s%%", name, progress)
            elif now - moved_at >= stall_s:
                return False
            time.sleep(min(LOAD_POLL_S, stall_s / 10))
        return False

    @property
    def loaded(self) -> frozenset[str]:
        """Collections this process has loaded (and synced) so far."""
        with self._lock:
            return frozenset(self._loaded)

    @staticmethod
    def _sync(c: MilvusClient, name: str) -> None:
        """One Strong read: afterwards every acknowledged write is visible to the reads that follow."""
        c.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
