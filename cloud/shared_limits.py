"""Token buckets kept in a SQLite file, so ``shoplens serve --workers N`` enforces one limit, not N.

Each worker is its own process: buckets in memory would give every worker a
full bucket, and a client whose connections land on several workers would get
N times the configured rate. A SQLite file on the local disk is the smallest
shared state that needs nothing else to run (no Redis to deploy): every take
is one ``BEGIN IMMEDIATE`` transaction (the write lock, so two workers cannot
both spend the last token), in WAL mode with ``synchronous=NORMAL`` (no fsync
per take: the buckets are worth nothing after a crash), stamped with the wall
clock (the one clock every process reads alike). The arithmetic is
:func:`shoplens.cloud.token_bucket.spend`, the same as the in-memory limiter.

Limits hold within one machine; instances on several machines still each have
their own buckets (docs/cloud.md).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from shoplens.settings import Settings

from shoplens.cloud.sqlite_state import open_state_db
from shoplens.cloud.token_bucket import Bucket, RateLimiter, TokenBuckets, spend

log = logging.getLogger("shoplens.cloud")

#: how long a take waits for another worker's transaction before giving up; short, because the
#: take runs on the event loop (each transaction holds the lock for microseconds)
BUSY_TIMEOUT_MS = 200
#: every this many takes a process drops buckets that have refilled completely (same as absent)
PURGE_EVERY = 1024

_SCHEMA = "CREATE TABLE IF NOT EXISTS buckets (ns TEXT NOT NULL, who TEXT NOT NULL, tokens REAL NOT NULL, stamp REAL NOT NULL, PRIMARY KEY (ns, who)) WITHOUT ROWID"


class SharedRateLimiter(TokenBuckets):
    """Buckets of namespace ``name`` in the SQLite file ``path``, shared by every process that opens it."""

    def __init__(self, path: Path, name: str, rate: float, burst: int) -> None:
        self.path = Path(path)
        self.name = name
        self.rate = float(rate)
        self.burst = float(burst)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._takes = 0
        self._warned_at = 0.0

    def _connection(self) -> sqlite3.Connection:
        # opened lazily and again after a fork: a SQLite connection must not cross processes
        if self._conn is None or self._pid != os.getpid():
            self._conn, self._pid = open_state_db(self.path, [_SCHEMA], busy_timeout_ms=BUSY_TIMEOUT_MS), os.getpid()
        return self._conn

    def attempt(self, who: str, cost: float = 1.0, *, commit: bool = True) -> float:
        with self._lock:
            try:
                return self._attempt(who, cost, commit)
            except sqlite3.OperationalError as exc:
                # Fail open: a limiter that cannot reach its state must not take the service down
                # with it. Logged (at most once a minute) because limits are then not enforced.
                now = time.monotonic()
                if now - self._warned_at > 60:
                    self._warned_at = now
                    log.warning("shared rate-limit state %s unusable (%s); request allowed", self.path, exc)
                return 0.0

    def _attempt(self, who: str, cost: float, commit: bool) -> float:
        conn = self._connection()
        # a look without spending (commit=False) only reads: a WAL reader takes no lock from the writers
        conn.execute("BEGIN IMMEDIATE" if commit else "BEGIN")
        try:
            now = time.time()  # read under the write lock: stamps never go backwards between workers
            row = conn.execute("SELECT tokens, stamp FROM buckets WHERE ns = ? AND who = ?", (self.name, who)).fetchone()
            bucket, wait = spend(Bucket(*row) if row else None, now=now, rate=self.rate, burst=self.burst, cost=cost)
            if wait == 0.0 and commit:
                conn.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?)", (self.name, who, bucket.tokens, bucket.stamp))
            self._takes += commit
            if commit and self._takes % PURGE_EVERY == 0:
                full_after = self.burst / self.rate
                conn.execute("DELETE FROM buckets WHERE ns = ? AND stamp < ?", (self.name, now - full_after - 1.0))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return wait


def limiter_for(settings: Settings, name: str, rate: float, burst: int) -> TokenBuckets:
    """Shared buckets when ``settings.shared_state_path`` is set (``serve --workers N`` sets it), else in memory."""
    if settings.shared_state_path is not None:
        return SharedRateLimiter(settings.shared_state_path, name, rate, burst)
    return RateLimiter(rate, burst)
