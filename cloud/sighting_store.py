"""Where confirmations and promoted sightings are kept: one small Milvus collection per model id.

Why Milvus, beside the catalog, rather than the service's SQLite files: a confirmation is
catalog data in the making, so it must live where the catalog lives. On a Milvus server every
service instance (and every ``--workers`` process, on any machine) sees the same confirmations,
and the rule counts keys across all of them; on a Lite file it sits in the same file. Either way
it survives restarts and crashes exactly as the catalog does, with nothing else to back up.

Why one collection per model id (``<alias>__sightings_<model>``): vectors of two embedders are
not comparable, so a confirmation made with one model must never count towards, or be promoted
into, another's catalog. The collection is created on the first confirmation of that model.

What a row holds, and nothing more: the vector, product id, model id, hashes of the device keys
behind it (``auth.key_id``, never a key), when, and its status. No photo, no image URL from a
device. Open confirmations (pending, held) have the id ``c-<hash of product and key hash>``, so a
device key has at most one open confirmation per product (a newer one replaces it: its repeats
count once); a promoted sighting's id is the image id of the catalog row it became.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pymilvus import DataType, MilvusClient

from shoplens.contract.feedback import SightingStatus

from shoplens.cloud.binding import Binding
from shoplens.cloud.filters import eq_expr, has_control

if TYPE_CHECKING:
    from shoplens.cloud.store import CatalogStore

_SLUG = re.compile(r"[^A-Za-z0-9_]")
ID_LEN = 64
#: rows one listing returns at most (one product has at most one open confirmation per device key)
MAX_ROWS = 10_000
#: reads of the rule's own state see every instance's writes (confirmations are rare: the wait is cheap)
CONSISTENCY = "Strong"
FIELDS = ["sighting_id", "product_id", "model_id", "status", "key_ids", "created_at", "vector"]


def sightings_name(alias: str, model_id: str) -> str:
    """The collection of ``model_id``'s confirmations, beside that model's catalog collections."""
    return f"{alias}__sightings_{_SLUG.sub('_', model_id)}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def candidate_id(product_id: str, key_id: str) -> str:
    """The id of a key's open confirmation of a product: one per key and product."""
    return "c-" + _digest(product_id, key_id)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class SightingRecord:
    """One stored row: an open confirmation, or a promoted sighting."""

    sighting_id: str
    product_id: str
    model_id: str
    status: SightingStatus
    key_ids: tuple[str, ...]
    created_at: int  # epoch ms
    vector: np.ndarray  # unit, float32

    def row(self) -> dict[str, Any]:
        return {"sighting_id": self.sighting_id, "product_id": self.product_id, "model_id": self.model_id,
                "status": self.status.value, "key_ids": {"keys": list(self.key_ids)}, "created_at": self.created_at,
                "vector": np.asarray(self.vector, np.float32).tolist()}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SightingRecord:
        return cls(sighting_id=str(row["sighting_id"]), product_id=str(row["product_id"]), model_id=str(row["model_id"]),
                   status=SightingStatus(str(row["status"])), key_ids=tuple(str(k) for k in (row.get("key_ids") or {}).get("keys") or ()),
                   created_at=int(row.get("created_at") or 0), vector=np.asarray(row["vector"], np.float32))

    def with_status(self, status: SightingStatus) -> SightingRecord:
        return SightingRecord(self.sighting_id, self.product_id, self.model_id, status, self.key_ids,
                              self.created_at, self.vector)


def sighting_image_id(model_id: str, product_id: str, sources: Iterable[SightingRecord]) -> str:
    """The catalog image id a promotion writes, derived from what was promoted (the same confirmations
    always give the same id, so a promotion retried after a crash rewrites its row instead of adding one)."""
    return "sighting-" + _digest(model_id, product_id, *sorted(f"{s.sighting_id}@{s.created_at}" for s in sources))


class SightingStore:
    """Read and write the sightings collections through the catalog store's connection (its guards,
    reload-on-released and Lite's one-write-at-a-time slot)."""

    def __init__(self, store: CatalogStore) -> None:
        self.store = store
        self._ready: set[str] = set()
        self._lock = threading.Lock()

    def _schema(self, dim: int) -> Any:
        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("sighting_id", DataType.VARCHAR, is_primary=True, max_length=ID_LEN)
        s.add_field("product_id", DataType.VARCHAR, max_length=512)
        s.add_field("model_id", DataType.VARCHAR, max_length=512)
        s.add_field("status", DataType.VARCHAR, max_length=16)
        s.add_field("key_ids", DataType.JSON)  # {"keys": [...]}: a 2.3 server takes JSON objects only
        s.add_field("created_at", DataType.INT64)
        s.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)  # never searched: the rule reads a product's rows
        return s

    def _collection(self, binding: Binding, *, create: bool) -> str | None:
        """The model's collection, created (and loaded) on first use when ``create``; None if absent."""
        name = sightings_name(self.store.alias, binding.model_id)
        if name in self._ready:
            return name
        with self._lock, self.store._call("sightings") as c:
            if not c.has_collection(name):
                if not create:
                    return None
                index = c.prepare_index_params()
                index.add_index("vector", index_type="AUTOINDEX" if self.store.lite else "FLAT", metric_type="COSINE")
                with self.store._write_slot():
                    c.create_collection(name, schema=self._schema(binding.dim), index_params=index,
                                        consistency_level=CONSISTENCY)
            self.store._ensure_loaded(c, name)
            self._ready.add(name)
        return name

    def put(self, binding: Binding, records: Sequence[SightingRecord]) -> None:
        """Insert or replace ``records`` (by id)."""
        if not records:
            return
        name = self._collection(binding, create=True)
        assert name is not None
        rows = [r.row() for r in records]
        with self.store._write_slot():
            self.store._on_collection("sightings_upsert", name, lambda c: c.upsert(name, rows))

    def delete(self, binding: Binding, ids: Sequence[str]) -> None:
        name = self._collection(binding, create=False)
        if name is None or not ids:
            return
        with self.store._write_slot():
            self.store._on_collection("sightings_delete", name, lambda c: c.delete(name, ids=list(ids)))

    def query(self, binding: Binding, *, product_id: str | None = None, status: SightingStatus | None = None,
              sighting_id: str | None = None) -> list[SightingRecord]:
        """Rows matching every given condition, oldest first."""
        name = self._collection(binding, create=False)
        values = [v for v in (product_id, sighting_id) if v is not None]
        if name is None or any(has_control(v) for v in values):  # such ids cannot have been stored
            return []
        conditions = [eq_expr(field, value) for field, value in (
            ("product_id", product_id), ("status", status.value if status else None), ("sighting_id", sighting_id))
            if value is not None]
        expr = " and ".join(conditions) or 'sighting_id != ""'
        rows = self.store._on_collection("sightings_query", name, lambda c: c.query(
            name, filter=expr, output_fields=FIELDS, limit=MAX_ROWS, consistency_level=CONSISTENCY))
        return sorted((SightingRecord.from_row(r) for r in rows), key=lambda r: (r.created_at, r.sighting_id))

    def get(self, binding: Binding, sighting_id: str) -> SightingRecord | None:
        found = self.query(binding, sighting_id=sighting_id)
        return found[0] if found else None
