"""Catalog import straight into Milvus (no service in between), via the cloud's own store.

For bulk loads next to the database (``shoplens index`` without ``--server``). It is a
:class:`shoplens.contract.sinks.CatalogSink`: the sdk's importer writes to it without
knowing the cloud, and the root CLI is what hands it to the importer. It reuses
``shoplens.cloud.store`` so the schema, consistency level and model binding are exactly
what the service reads; it needs the ``cloud`` extra. A Milvus Lite file is locked by one
process: stop the service, or import through its API (``--server``).
"""

from __future__ import annotations

import threading
from typing import Any

from shoplens.contract.schemas import CatalogImage
from shoplens.extras import require_extra
from shoplens.settings import Settings, get_settings


#: one store per catalog in this process, shared by the sinks of a multi-model import: a Lite
#: file has one server per process, and closing it under another sink would break that one
_STORES: dict[tuple[str, str], tuple[Any, int]] = {}
_LOCK = threading.Lock()


def _acquire(settings: Settings) -> Any:
    from shoplens.cloud.store import CatalogStore

    key = (settings.resolved_milvus_uri(), settings.collection)
    with _LOCK:
        store, users = _STORES.get(key, (None, 0))
        if store is None:
            store = CatalogStore(settings)
        _STORES[key] = (store, users + 1)
        return store


def _release(settings: Settings) -> None:
    key = (settings.resolved_milvus_uri(), settings.collection)
    with _LOCK:
        store, users = _STORES.pop(key)
        if users > 1:
            _STORES[key] = (store, users - 1)
            return
    store.close()


class MilvusSink:
    """Writes into the collection serving ``model_id`` (one of several during a rollout), or one being
    built for it; a model with neither gets a new collection, served only if nothing is served yet."""

    def __init__(self, model_id: str, settings: Settings | None = None) -> None:
        require_extra("cloud")
        self.model_id = model_id
        self.settings = settings or get_settings()
        self.store = _acquire(self.settings)
        entry = self.store.models().get(model_id)
        if entry is not None and entry.status.served:
            self.binding = self.store.model_binding(model_id)
        else:
            mine = [c for c in self.store.collections() if c["model_id"] == model_id]
            # an existing (newest) collection for this model: resume filling it; else a new one
            # (a new model is served with `shoplens reindex` or the collection activate call)
            self.binding = self.store.collection_binding(mine[-1]["collection"]) if mine else self.store.create_collection(model_id)

    def upsert(self, images: list[CatalogImage]) -> None:
        self.store.upsert(self.binding, images)

    def finish(self) -> None:
        self.store.flush(self.binding)

    def close(self) -> None:
        _release(self.settings)
