"""Automatic flush: seal written rows by age and by count, and once more on shutdown.

Why the service flushes by itself: until rows are sealed into a segment,
Milvus searches them by brute force (measured at 9k rows on Milvus Lite: 176 ms
per search over unflushed rows, 13 ms after a flush), and nobody calls
``POST /v1/catalog/flush`` after a crash or a trickle of single upserts. The
policy: a collection is flushed ``flush_interval_s`` after its first unflushed
write, or at once when ``flush_rows`` rows are waiting, and every collection
with waiting rows is flushed on shutdown. A write is durable before it is
acknowledged either way (Milvus' WAL); flushing only affects search speed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("shoplens.cloud.flush")


@dataclass
class _Pending:
    rows: int
    since: float  # monotonic time of the first unflushed write


class AutoFlusher:
    """Counts unflushed rows per collection and flushes them when the policy says so.

    ``flush(collection)`` is the store's blocking call; it runs in a worker thread so
    the event loop keeps serving. ``on_change(total)`` reports the unflushed total
    (the ``shoplens_unflushed_rows`` gauge).
    """

    def __init__(self, flush: Callable[[str], None], interval_s: float, max_rows: int,
                 on_change: Callable[[int], None] = lambda total: None) -> None:
        self._flush = flush
        self.interval_s = interval_s
        self.max_rows = max_rows
        self._on_change = on_change
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def unflushed(self) -> int:
        with self._lock:
            return sum(p.rows for p in self._pending.values())

    def note_write(self, collection: str, rows: int) -> None:
        """Record acknowledged rows (upserts and deletes: both leave growing segments)."""
        if rows <= 0:
            return
        with self._lock:
            pending = self._pending.setdefault(collection, _Pending(0, time.monotonic()))
            pending.rows += rows
            due = pending.rows >= self.max_rows
            total = sum(p.rows for p in self._pending.values())
        self._on_change(total)
        if due:
            self._wake.set()

    def note_flushed(self, collection: str) -> None:
        """A flush of ``collection`` finished (by this class or by ``POST /v1/catalog/flush``)."""
        with self._lock:
            self._pending.pop(collection, None)
            total = sum(p.rows for p in self._pending.values())
        self._on_change(total)

    def due(self, now: float | None = None) -> list[str]:
        """Collections the policy says to flush now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return [c for c, p in self._pending.items() if p.rows >= self.max_rows or now - p.since >= self.interval_s]

    def flush_now(self, collections: list[str]) -> None:
        """Flush each collection (blocking); a failure keeps its rows pending for the next pass."""
        for collection in collections:
            with self._lock:
                pending = self._pending.get(collection)
                rows = pending.rows if pending else 0
            try:
                self._flush(collection)
            except Exception as exc:  # noqa: BLE001 - Milvus away or the collection dropped: retry later
                log.warning("automatic flush of %s failed (%s); retrying later", collection, type(exc).__name__)
                with self._lock:
                    if collection in self._pending:
                        self._pending[collection].since = time.monotonic()
                continue
            with self._lock:  # rows written while the flush ran stay pending
                current = self._pending.get(collection)
                if current is not None:
                    current.rows -= rows
                    if current.rows <= 0:
                        del self._pending[collection]
                    else:
                        current.since = time.monotonic()
                total = sum(p.rows for p in self._pending.values())
            self._on_change(total)
            log.info("flushed %s (%d rows were unflushed)", collection, rows)

    def flush_all(self) -> None:
        """Flush everything waiting (shutdown)."""
        with self._lock:
            collections = list(self._pending)
        self.flush_now(collections)

    async def _run(self) -> None:
        tick = min(1.0, self.interval_s / 2)
        while True:
            await asyncio.to_thread(self._wake.wait, tick)
            self._wake.clear()
            collections = self.due()
            if collections:
                await asyncio.to_thread(self.flush_now, collections)

    def start(self) -> None:
        """Start the background pass on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="shoplens-auto-flush")

    async def stop(self) -> None:
        """Stop the background pass, then flush what is waiting."""
        if self._task is not None:
            self._task.cancel()
            self._wake.set()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await asyncio.to_thread(self.flush_all)
