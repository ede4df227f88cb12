"""Re-index on a model change: build a collection for the new model id, then swap the alias.

Searches keep working throughout: the new collection is filled while the old
model is served, then served beside it (``alter_alias`` calls, atomic for readers),
so apps still on the old model keep working until an operator retires it
(``shoplens models``). docs/cloud.md, "Rolling out a new embedder", is the runbook.

Source of the new vectors: a JSONL file of embedded catalog rows, one contract
:class:`CatalogImage` per line, as ``shoplens index`` / ``reindex --catalog``
write it.

The steps are written once, in :func:`reindex`, over a :class:`CatalogAdmin`:
:class:`StoreAdmin` goes straight to Milvus (a server, or a Lite file no service
has open); the SDK's ``ServiceAdmin`` goes through a running service's admin API
(needed for a Lite file while it is served: one process per file).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from shoplens.contract.errors import ErrorCode, ShoplensError
from shoplens.contract.manifest import load_manifest
from shoplens.contract.schemas import MAX_UPSERT_IMAGES, CatalogImage
from shoplens.contract.service import ModelInfo

from shoplens.cloud.lifecycle import model_info
from shoplens.cloud.registry import MODEL_ACTIONS, ModelStatus
from shoplens.cloud.store import CatalogStore


@dataclass
class ReindexResult:
    model_id: str
    collection: str
    rows: int
    previous_collection: str | None
    previous_model_id: str | None
    promoted: bool
    retired_previous: bool
    dropped_previous: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_id_from_bundle(bundle: Path) -> str:
    """The embedder model id of a bundle (its manifest is validated on the way)."""
    manifest = load_manifest(bundle)
    embedder = getattr(manifest, "embedder", None)
    if embedder is None:
        raise ValueError(f"{bundle} is not an embedder bundle (no 'embedder' section in its manifest)")
    return str(embedder.model_id)


def read_rows(path: Path, chunk: int = MAX_UPSERT_IMAGES) -> Iterator[list[CatalogImage]]:
    """Validated catalog rows in chunks; the error names the line of a bad row."""
    batch: list[CatalogImage] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                batch.append(CatalogImage.model_validate_json(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not a catalog row: {exc}") from None
            if len(batch) == chunk:
                yield batch
                batch = []
    if batch:
        yield batch


class CatalogAdmin(Protocol):
    """The catalog operations a re-index needs, wherever the catalog is reached from."""

    def served(self) -> tuple[str, str] | None:
        """(collection, model id) behind the alias, or None."""

    def create(self, model_id: str) -> str:
        """A new, not yet served collection for ``model_id``; its name."""

    def upsert(self, collection: str, model_id: str, images: list[CatalogImage]) -> int:
        """Write ``images`` into ``collection``; how many were upserted."""

    def count(self, collection: str) -> int:
        """Rows in ``collection`` (sealed first, so every acknowledged write is counted)."""

    def serve(self, collection: str, promote: bool) -> None:
        """Serve ``collection`` for its model id (atomic for readers); ``promote``: as the current model."""

    def retire(self, model_id: str) -> None:
        """Stop serving ``model_id`` (its apps get 410 naming the current model)."""

    def drop(self, collection: str) -> None:
        """Drop a collection that is no longer served."""


class ReindexError(ShoplensError):
    """The new collection is not what was written; nothing was swapped."""

    code = ErrorCode.INTERNAL


class StoreAdmin:
    """:class:`CatalogAdmin` straight on Milvus through a :class:`CatalogStore`."""

    def __init__(self, store: CatalogStore) -> None:
        self.store = store

    def served(self) -> tuple[str, str] | None:
        binding = self.store.binding(refresh=True)
        return (binding.collection, binding.model_id) if binding else None

    def create(self, model_id: str) -> str:
        return self.store.create_collection(model_id, activate=False).collection

    def upsert(self, collection: str, model_id: str, images: list[CatalogImage]) -> int:
        return self.store.upsert(self.store.collection_binding(collection), images)

    def count(self, collection: str) -> int:
        binding = self.store.collection_binding(collection)
        self.store.flush(binding)
        return self.store.count(binding)

    def serve(self, collection: str, promote: bool) -> None:
        self.store.serve(collection, promote=promote)

    def retire(self, model_id: str) -> None:
        self.store.set_status(model_id, ModelStatus.RETIRED)

    def drop(self, collection: str) -> None:
        self.store.drop_collection(collection)

    def models(self) -> list[ModelInfo]:
        return self.store.model_infos()

    def change(self, model_id: str, action: str, *, sunset: str | None = None, bundle_url: str | None = None) -> ModelInfo:
        entry = self.store.set_status(model_id, MODEL_ACTIONS[action], sunset=sunset, bundle_url=bundle_url)
        return model_info(self.store, entry)


def reindex(admin: CatalogAdmin, model_id: str, rows: Path, *, promote: bool = False, drop_old: bool = False) -> ReindexResult:
    """Build, fill and verify a collection for ``model_id``, then serve it beside the models already served.

    Apps on the previous model keep working: the new model is served as supported, or as
    the current one with ``promote`` (what new apps should use). ``drop_old`` also promotes,
    then retires the previous current model (its apps get 410 naming the new one) and drops
    its collection. Re-indexing the model that is already current (a rebuild) replaces its
    collection in place and drops the old one with ``drop_old``.
    """
    previous = admin.served()
    target = admin.create(model_id)
    n = 0
    ids: set[str] = set()
    for batch in read_rows(rows):
        n += admin.upsert(target, model_id, batch)
        ids.update(img.image_id for img in batch)
    counted = admin.count(target)
    if counted != len(ids):
        raise ReindexError(
            f"new collection {target} holds {counted} rows, {len(ids)} distinct images were written; "
            "not serving it (the models served before are unchanged)"
        )
    admin.serve(target, promote or drop_old)
    retired = dropped = False
    if drop_old and previous is not None and previous[0] != target:
        if previous[1] != model_id:
            admin.retire(previous[1])
            retired = True
        admin.drop(previous[0])
        dropped = True
    return ReindexResult(
        model_id=model_id,
        collection=target,
        rows=n,
        previous_collection=previous[0] if previous else None,
        previous_model_id=previous[1] if previous else None,
        promoted=promote or drop_old or previous is None or previous[1] == model_id,
        retired_previous=retired,
        dropped_previous=dropped,
    )


def dumps(result: ReindexResult) -> str:
    return json.dumps(result.as_dict(), indent=2)
