"""Open the SQLite files the service keeps its shared state in (rate-limit buckets, idempotency keys).

One rule for both: WAL (readers never block the one writer; durable across a
process kill, fsync at checkpoints), autocommit (callers run their own
``BEGIN IMMEDIATE``), usable from the thread pool, and a fresh connection per
process, since a SQLite connection must not cross a fork.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path


def open_state_db(path: Path, schema: Iterable[str], *, busy_timeout_ms: int | None = None) -> sqlite3.Connection:
    """A connection to ``path`` (created with its folder if missing) with ``schema`` applied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    for statement in schema:
        conn.execute(statement)
    if busy_timeout_ms is not None:
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    return conn
