"""The catalog import's resume ledger: which image contents each model's index has acknowledged.

A SQLite file keyed by (content hash, model id): a rerun after a crash skips what the
index acknowledged, per model, so a multi-model import redoes only what one model lacks.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path


class ImportState:
    """The resume ledger: content hashes the index has acknowledged, and failures."""

    def __init__(self, path: str | os.PathLike[str], model_id: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.model_id = model_id
        # the pool's feeder thread checks and records too: one connection, serialised by a lock
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        self._lock = threading.Lock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS done (hash TEXT, model_id TEXT, image_id TEXT, product_id TEXT, PRIMARY KEY (hash, model_id))")
        self.db.execute("CREATE TABLE IF NOT EXISTS failed (image TEXT, model_id TEXT, reason TEXT, PRIMARY KEY (image, model_id))")

    def is_done(self, digest: str) -> bool:
        with self._lock:
            return self.db.execute("SELECT 1 FROM done WHERE hash=? AND model_id=?", (digest, self.model_id)).fetchone() is not None

    def mark_done(self, rows: list[tuple[str, str, str]]) -> None:
        with self._lock:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO done VALUES (?,?,?,?)", [(h, self.model_id, iid, pid) for h, iid, pid in rows])
            self.db.execute("COMMIT")

    def mark_failed(self, image: str, reason: str) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO failed VALUES (?,?,?)", (image, self.model_id, reason))

    def done_image_ids(self) -> list[str]:
        """Every image id this model's index acknowledged: what the Ray engine's workers skip (they
        cannot open this file; the driver broadcasts the ids)."""
        with self._lock:
            return [r[0] for r in self.db.execute("SELECT image_id FROM done WHERE model_id=?", (self.model_id,))]

    def done_count(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM done WHERE model_id=?", (self.model_id,)).fetchone()[0])

    def close(self) -> None:
        self.db.close()


class ImportStates:
    """The ledgers of several models imported in one pass: an image is pending until every model has it."""

    def __init__(self, states: list[ImportState]) -> None:
        self.states = states

    def is_done(self, digest: str) -> bool:
        return all(s.is_done(digest) for s in self.states)

    def mark_failed(self, image: str, reason: str) -> None:
        for s in self.states:
            s.mark_failed(image, reason)

    def close(self) -> None:
        for s in self.states:
            s.close()
