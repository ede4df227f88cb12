"""A disk-backed queue of searches and confirmations made while the phone had no network.

Only vectors, search options and confirmed product ids are stored (never a
photo), each stamped with the embedder's model id and an expiry. On replay, an entry is sent if it
is still valid; it is dropped, with the reason recorded, when it expired or
when the service now serves another model (its vector would be meaningless
there). SQLite gives atomic appends and deletes, so a crash mid-replay loses
nothing and replays nothing twice that was already answered. A confirmation
keeps the ``Idempotency-Key`` of its first attempt as its id, so one whose
answer was lost (sent, then the network dropped) is replayed by the service,
not counted twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from shoplens.contract.codecs import Encoding, encode_vector
from shoplens.contract.feedback import FeedbackResult
from shoplens.contract.schemas import BatchSearchResponse
from shoplens.sdk.errors import ModelMismatchError, ModelRetiredError, NetworkError, ServiceUnavailableError

DEFAULT_TTL_S = 24 * 3600


class DropReason(str, Enum):
    EXPIRED = "expired"
    MODEL_MISMATCH = "model_mismatch"
    MODEL_RETIRED = "model_retired"  # the service answers 410 for this model: replaying can never succeed
    REJECTED = "rejected"  # the service refused the request itself (4xx other than 409)


@dataclass
class QueuedSearch:
    id: str
    created_at: float
    expires_at: float
    model_id: str
    encoding: str
    vectors: list[str]
    options: dict[str, Any]


@dataclass
class QueuedConfirmation:
    """A confirmed sighting (``ShoplensClient.confirm``) waiting for the network; ``id`` is its Idempotency-Key."""

    id: str
    created_at: float
    expires_at: float
    model_id: str
    encoding: str
    vector: str
    product_id: str


@dataclass
class ReplayOutcome:
    entry: QueuedSearch | QueuedConfirmation
    response: BatchSearchResponse | FeedbackResult | None = None
    dropped: DropReason | None = None
    detail: str = ""


class OfflineQueue:
    """``OfflineQueue(path)``: enqueue while offline, ``replay(client)`` when back."""

    def __init__(self, path: str | Path, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS searches (id TEXT PRIMARY KEY, created_at REAL, expires_at REAL, model_id TEXT, encoding TEXT, vectors TEXT, options TEXT)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS confirmations (id TEXT PRIMARY KEY, created_at REAL, expires_at REAL, model_id TEXT, encoding TEXT, vector TEXT, product_id TEXT)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS dropped (id TEXT PRIMARY KEY, reason TEXT, detail TEXT, at REAL)")

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        """Entries waiting: searches and confirmations."""
        return sum(int(self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in ("searches", "confirmations"))

    def enqueue(self, vectors: list[np.ndarray | str], *, model_id: str, encoding: str | Encoding = Encoding.I8, ttl_s: float | None = None, **options: Any) -> QueuedSearch:
        enc = Encoding(encoding)
        now = time.time()
        entry = QueuedSearch(
            id=str(uuid.uuid4()),
            created_at=now,
            expires_at=now + (self.ttl_s if ttl_s is None else ttl_s),
            model_id=model_id,
            encoding=enc.value,
            vectors=[v if isinstance(v, str) else encode_vector(np.asarray(v), enc) for v in vectors],
            options=options,
        )
        self._db.execute(
            "INSERT INTO searches VALUES (?,?,?,?,?,?,?)",
            (entry.id, entry.created_at, entry.expires_at, entry.model_id, entry.encoding, json.dumps(entry.vectors), json.dumps(entry.options)),
        )
        return entry

    def enqueue_confirmation(self, vector: np.ndarray | str, *, product_id: str, model_id: str, encoding: str | Encoding = Encoding.I8,
                             ttl_s: float | None = None, idempotency_key: str | None = None) -> QueuedConfirmation:
        """Keep a confirmation for later; ``idempotency_key``: the one its first attempt carried, if any."""
        enc = Encoding(encoding)
        now = time.time()
        entry = QueuedConfirmation(
            id=idempotency_key or str(uuid.uuid4()),
            created_at=now,
            expires_at=now + (self.ttl_s if ttl_s is None else ttl_s),
            model_id=model_id,
            encoding=enc.value,
            vector=vector if isinstance(vector, str) else encode_vector(np.asarray(vector), enc),
            product_id=product_id,
        )
        self._db.execute(
            "INSERT OR REPLACE INTO confirmations VALUES (?,?,?,?,?,?,?)",
            (entry.id, entry.created_at, entry.expires_at, entry.model_id, entry.encoding, entry.vector, entry.product_id),
        )
        return entry

    def pending_confirmations(self) -> list[QueuedConfirmation]:
        rows = self._db.execute("SELECT id, created_at, expires_at, model_id, encoding, vector, product_id FROM confirmations ORDER BY created_at").fetchall()
        return [QueuedConfirmation(*r) for r in rows]

    def pending(self) -> list[QueuedSearch]:
        rows = self._db.execute("SELECT id, created_at, expires_at, model_id, encoding, vectors, options FROM searches ORDER BY created_at").fetchall()
        return [QueuedSearch(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6])) for r in rows]

    def dropped(self) -> list[tuple[str, str, str]]:
        return [tuple(r) for r in self._db.execute("SELECT id, reason, detail FROM dropped ORDER BY at")]

    @staticmethod
    def _table(entry: QueuedSearch | QueuedConfirmation) -> str:
        return "confirmations" if isinstance(entry, QueuedConfirmation) else "searches"

    def _drop(self, entry: QueuedSearch | QueuedConfirmation, reason: DropReason, detail: str) -> ReplayOutcome:
        self._db.execute("BEGIN")
        self._db.execute(f"DELETE FROM {self._table(entry)} WHERE id = ?", (entry.id,))
        self._db.execute("INSERT OR REPLACE INTO dropped VALUES (?,?,?,?)", (entry.id, reason.value, detail, time.time()))
        self._db.execute("COMMIT")
        return ReplayOutcome(entry, dropped=reason, detail=detail)

    def replay(self, client: Any, *, current_model_id: str | None = None, now: float | None = None) -> list[ReplayOutcome]:
        """Send what is still valid (searches and confirmations), oldest first; stop (keeping the rest)
        when the network fails again. A confirmation goes with its own id as Idempotency-Key."""
        from shoplens.sdk.errors import ShoplensAPIError

        now = time.time() if now is None else now
        outcomes: list[ReplayOutcome] = []
        entries: list[QueuedSearch | QueuedConfirmation] = [*self.pending(), *self.pending_confirmations()]
        for entry in sorted(entries, key=lambda e: e.created_at):
            if entry.expires_at <= now:
                outcomes.append(self._drop(entry, DropReason.EXPIRED, f"expired {now - entry.expires_at:.0f}s ago"))
                continue
            if current_model_id is not None and entry.model_id != current_model_id:
                outcomes.append(self._drop(entry, DropReason.MODEL_MISMATCH, f"queued for {entry.model_id}, the app now uses {current_model_id}"))
                continue
            try:
                response: BatchSearchResponse | FeedbackResult
                if isinstance(entry, QueuedConfirmation):
                    response = client.confirm(entry.vector, product_id=entry.product_id, model_id=entry.model_id,
                                              encoding=entry.encoding, idempotency_key=entry.id)
                else:
                    response = client.search_batch(entry.vectors, model_id=entry.model_id, encoding=entry.encoding, **entry.options)
            except (NetworkError, ServiceUnavailableError):
                break  # still offline: keep this and everything after it
            except ModelMismatchError as exc:
                outcomes.append(self._drop(entry, DropReason.MODEL_MISMATCH, exc.message))
                continue
            except ModelRetiredError as exc:
                outcomes.append(self._drop(entry, DropReason.MODEL_RETIRED, exc.message))
                continue
            except ShoplensAPIError as exc:
                outcomes.append(self._drop(entry, DropReason.REJECTED, f"{exc.code.value}: {exc.message}"))
                continue
            self._db.execute(f"DELETE FROM {self._table(entry)} WHERE id = ?", (entry.id,))
            outcomes.append(ReplayOutcome(entry, response=response))
        return outcomes
