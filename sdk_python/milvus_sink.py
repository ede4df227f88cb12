"""Catalog import straight into Milvus (no service in between), via the cloud's own store.

For bulk loads next to the database. It reuses ``shoplens.cloud.store`` so the
schema, consistency level and model binding are exactly what the service
reads; it needs the ``cloud`` extra. A Milvus Lite file is locked by one
process: stop the service, or import through its API (``--server``).
"""

from __future__ import annotations

from shoplens.contract.schemas import CatalogImage
from shoplens.extras import require_extra
from shoplens.settings import Settings, get_settings


class MilvusSink:
    """Writes into the collection bound to ``model_id``: the served one, or one being rebuilt for it."""

    def __init__(self, model_id: str, settings: Settings | None = None) -> None:
        require_extra("cloud")
        from shoplens.cloud.store import CatalogStore

        self.model_id = model_id
        self.store = CatalogStore(settings or get_settings())
        current = self.store.binding(refresh=True)
        if current is not None and current.model_id == model_id:
            self.binding = current
        else:
            mine = [c for c in self.store.collections() if c["model_id"] == model_id]
            # an existing (newest) collection for this model: resume filling it; else a new one,
            # served only if nothing is served yet (a model change goes live with `shoplens reindex`)
            self.binding = self.store.collection_binding(mine[-1]["collection"]) if mine else self.store.create_collection(model_id)

    def upsert(self, images: list[CatalogImage]) -> None:
        self.store.upsert(self.binding, images)

    def finish(self) -> None:
        self.store.flush(self.binding)

    def close(self) -> None:
        self.store.close()
