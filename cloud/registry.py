"""The model registry: which embedder model ids the service serves, and in which stage of their life.

Phones update their embedder bundle over days or weeks, so the service serves
several model ids at once, each from its own collection through its own alias
(``<alias>__m_<model>``), and routes a search by the request's model id. The
registry records each model's status:

- ``current``: what new apps should use (the main alias points at its collection);
- ``supported``: served like the current one;
- ``deprecated``: served, with ``Deprecation`` and ``Sunset`` response headers;
- ``retired``: answered 410 Gone naming the current model and where its bundle is.

It lives in Milvus itself (a small collection ``<alias>__models``, one row per
model id), so every service instance and every restart sees the same registry,
on a Lite file and on a server alike. Milvus needs a vector field in every
collection; the registry's is a 2-d placeholder that is never searched.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, replace
from datetime import date
from enum import Enum
from typing import Any

from pymilvus import DataType, MilvusClient

STATUS_FIELD_LEN = 16
_SLUG = re.compile(r"[^A-Za-z0-9_]")


class ModelStatus(str, Enum):
    CURRENT = "current"
    SUPPORTED = "supported"
    DEPRECATED = "deprecated"
    RETIRED = "retired"

    @property
    def served(self) -> bool:
        return self is not ModelStatus.RETIRED


#: the lifecycle actions (API paths and CLI commands) and the status each one sets
MODEL_ACTIONS = {"promote": ModelStatus.CURRENT, "support": ModelStatus.SUPPORTED,
                 "deprecate": ModelStatus.DEPRECATED, "retire": ModelStatus.RETIRED}


@dataclass(frozen=True)
class ModelEntry:
    """One model id in the registry."""

    model_id: str
    status: ModelStatus
    sunset: str = ""  # ISO date (deprecated models): when it will be retired
    deprecated_at: int = 0  # epoch seconds when it was deprecated (the Deprecation header)
    bundle_url: str = ""  # where apps download this model's bundle (named in 410s for the current model)
    updated_at: int = 0  # epoch ms

    def with_status(self, status: ModelStatus, **changes: Any) -> ModelEntry:
        return replace(self, status=status, updated_at=time.time_ns() // 1_000_000, **changes)

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value, "v": [0.0, 0.0]}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ModelEntry:
        return cls(model_id=str(row["model_id"]), status=ModelStatus(str(row["status"])), sunset=str(row.get("sunset") or ""),
                   deprecated_at=int(row.get("deprecated_at") or 0), bundle_url=str(row.get("bundle_url") or ""),
                   updated_at=int(row.get("updated_at") or 0))


def registry_name(alias: str) -> str:
    return f"{alias}__models"


def model_alias(alias: str, model_id: str) -> str:
    """The alias through which ``model_id``'s collection is served."""
    return f"{alias}__m_{_SLUG.sub('_', model_id)}"


def parse_sunset(value: str) -> str:
    """An ISO date (YYYY-MM-DD), normalised; ValueError otherwise."""
    return date.fromisoformat(value.strip()).isoformat()


def http_date(iso_day: str) -> str:
    """RFC 8594's Sunset value: the end of that UTC day as an HTTP-date."""
    d = date.fromisoformat(iso_day)
    return time.strftime("%a, %d %b %Y 23:59:59 GMT", (d.year, d.month, d.day, 0, 0, 0, d.weekday(), 1, 0))


class Registry:
    """Read and write the registry collection through a sync Milvus client (the caller guards the calls)."""

    FIELDS = ["model_id", "status", "sunset", "deprecated_at", "bundle_url", "updated_at"]

    def __init__(self, alias: str, lite: bool) -> None:
        self.name = registry_name(alias)
        self.lite = lite

    def ensure(self, c: MilvusClient) -> None:
        """Create and load the registry collection if it does not exist yet."""
        if c.has_collection(self.name):
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("model_id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("status", DataType.VARCHAR, max_length=STATUS_FIELD_LEN)
        schema.add_field("sunset", DataType.VARCHAR, max_length=32)
        schema.add_field("deprecated_at", DataType.INT64)
        schema.add_field("bundle_url", DataType.VARCHAR, max_length=8192)
        schema.add_field("updated_at", DataType.INT64)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
        index = c.prepare_index_params()
        index.add_index("v", index_type="AUTOINDEX" if self.lite else "FLAT", metric_type="L2")
        c.create_collection(self.name, schema=schema, index_params=index, consistency_level="Strong")

    def entries(self, c: MilvusClient) -> dict[str, ModelEntry]:
        if not c.has_collection(self.name):
            return {}
        rows = c.query(self.name, filter='model_id != ""', output_fields=self.FIELDS, consistency_level="Strong")
        return {str(r["model_id"]): ModelEntry.from_row(r) for r in rows}

    def put(self, c: MilvusClient, *entries: ModelEntry) -> None:
        """Write ``entries`` in one upsert (a promotion changes two rows together)."""
        self.ensure(c)
        c.upsert(self.name, [e.row() for e in entries])
