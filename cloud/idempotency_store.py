"""Where idempotency keys and the answers they replay are kept: a SQLite file.

A file, not memory, because the promise must survive what retries are for:
a worker restart, or the retry landing on another ``--workers`` process. Each
claim is one ``BEGIN IMMEDIATE`` transaction, so of two concurrent requests
with the same key exactly one runs. The store is bounded: answers older than
``ttl_s`` and claims abandoned for ``lease_s`` (a process killed mid-request)
are purged on every claim, and at most ``max_entries`` answers are kept.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

from shoplens.settings import Settings

from shoplens.cloud.sqlite_state import open_state_db

T = TypeVar("T")

#: a claim older than this is taken to belong to a request that died (its process was killed)
LEASE_S = 60.0
MAX_ENTRIES = 100_000
_CAP_EVERY = 64

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries (scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, "
    "state TEXT NOT NULL, stamp REAL NOT NULL, owner TEXT NOT NULL DEFAULT '', status INTEGER, content_type TEXT, body BLOB, "
    "PRIMARY KEY (scope, key))",
    "CREATE INDEX IF NOT EXISTS entries_stamp ON entries (stamp)",
)


def idempotency_path(settings: Settings) -> Path:
    """``IDEMPOTENCY_DB``, or one file per catalog (Milvus URI + alias) under the cache dir.

    Per catalog so two services on one machine never replay each other's
    answers, and every worker of one service finds the same file.
    """
    if settings.idempotency_db is not None:
        return settings.idempotency_db
    digest = hashlib.sha256(f"{settings.resolved_milvus_uri()}\n{settings.collection}".encode()).hexdigest()[:12]
    alias = re.sub(r"[^A-Za-z0-9_.-]", "_", settings.collection)[:40]
    return settings.cache_dir / "service" / f"idempotency-{alias}-{digest}.db"


def _process_identity(pid: int) -> str | None:
    """``boot id:pid:start time`` of a process on this machine, None if it does not exist.

    The start time tells a process from a later one that got the same pid; the boot id
    tells this boot from an earlier one (after a reboot every old claim's owner is gone).
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3, starttime field 22
    return f"{boot}:{pid}:{fields[19]}"


def _owner_gone(owner: str) -> bool:
    """True when ``owner`` is a process of this machine's current boot that no longer runs.

    A claim whose owner was killed (kill -9, OOM) would otherwise refuse every retry of its
    write with 409 until the lease runs out; the retry is what the client does right after
    such a crash, so the claim is taken over at once. Owners this machine cannot check
    (another boot, no /proc) keep their claim until the lease ends.
    """
    boot, _, rest = owner.partition(":")
    pid_text, _, _start = rest.partition(":")
    mine = _process_identity(os.getpid())
    if not owner or mine is None or not pid_text.isdigit() or not mine.startswith(boot + ":"):
        return False
    return _process_identity(int(pid_text)) != owner


@dataclass(frozen=True)
class StoredResponse:
    status: int
    content_type: str
    body: bytes


class Outcome(Enum):
    FRESH = "fresh"  # claimed: run the request, then save or release
    REPLAY = "replay"  # answered before: send the stored response
    MISMATCH = "mismatch"  # the key was used for another request
    IN_FLIGHT = "in_flight"  # the same request is running right now


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    response: StoredResponse | None = None


class IdempotencyStore:
    """Keys scoped by caller: ``scope`` (who), ``key`` (the client's Idempotency-Key), ``fingerprint`` (what)."""

    def __init__(self, path: Path, ttl_s: float, *, lease_s: float = LEASE_S, max_entries: int = MAX_ENTRIES) -> None:
        self.path = Path(path)
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._owner = ""
        self._claims = 0

    def _connection(self) -> sqlite3.Connection:
        # opened on first use (a service that never sees an Idempotency-Key creates no file)
        if self._conn is None or self._pid != os.getpid():
            self._conn, self._pid = open_state_db(self.path, _SCHEMA), os.getpid()
            self._owner = _process_identity(self._pid) or ""
        return self._conn

    def _transaction(self, work: Callable[[sqlite3.Connection, float], T]) -> T:
        """``work(connection, now)`` in one write transaction (the clock read under the lock)."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn, time.time())
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def claim(self, scope: str, key: str, fingerprint: str) -> Claim:
        """Decide what a request carrying ``key`` does; FRESH leaves a claim to :meth:`save` or :meth:`release`."""

        def work(conn: sqlite3.Connection, now: float) -> Claim:
            self._purge(conn, now)
            row = conn.execute(
                "SELECT fingerprint, state, status, content_type, body, owner FROM entries WHERE scope = ? AND key = ?", (scope, key)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO entries (scope, key, fingerprint, state, stamp, owner) VALUES (?, ?, ?, 'pending', ?, ?)",
                    (scope, key, fingerprint, now, self._owner),
                )
                return Claim(Outcome.FRESH)
            stored_fp, state, status, content_type, body, owner = row
            if stored_fp != fingerprint:
                return Claim(Outcome.MISMATCH)
            if state == "pending" and _owner_gone(owner):
                conn.execute("UPDATE entries SET stamp = ?, owner = ? WHERE scope = ? AND key = ?", (now, self._owner, scope, key))
                return Claim(Outcome.FRESH)
            if state == "pending":
                return Claim(Outcome.IN_FLIGHT)
            return Claim(Outcome.REPLAY, StoredResponse(int(status), str(content_type or ""), bytes(body or b"")))

        return self._transaction(work)

    def save(self, scope: str, key: str, fingerprint: str, response: StoredResponse) -> None:
        """Store the answer of a claimed request; the TTL runs from now."""
        self._transaction(lambda conn, now: conn.execute(
            "UPDATE entries SET state = 'done', stamp = ?, status = ?, content_type = ?, body = ? "
            "WHERE scope = ? AND key = ? AND fingerprint = ? AND state = 'pending'",
            (now, response.status, response.content_type, response.body, scope, key, fingerprint),
        ))

    def release(self, scope: str, key: str, fingerprint: str) -> None:
        """Drop a claim whose answer is not kept (a 5xx, or a request that never ran): a retry runs again."""
        self._transaction(lambda conn, now: conn.execute(
            "DELETE FROM entries WHERE scope = ? AND key = ? AND fingerprint = ? AND state = 'pending'", (scope, key, fingerprint)
        ))

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        conn.execute(
            "DELETE FROM entries WHERE (state = 'done' AND stamp < ?) OR (state = 'pending' AND stamp < ?)",
            (now - self.ttl_s, now - self.lease_s),
        )
        self._claims += 1
        if self._claims % _CAP_EVERY == 0:
            conn.execute(
                "DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries ORDER BY stamp DESC LIMIT -1 OFFSET ?)",
                (self.max_entries,),
            )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
