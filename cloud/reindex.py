"""Re-index on a model change: build a collection for the new model id, then swap the alias.

Searches keep working throughout: the new collection is filled while the
alias still points at the old one, and the swap is one ``alter_alias`` call.
After it, vectors of the old model get 409 naming the new id. The old
collection is kept (a rollback is one activate call) until ``drop_old``.

Source of the new vectors: a JSONL file of already-embedded catalog rows, one
contract :class:`CatalogImage` per line. Embedding the catalog images with
the new model is the catalog importer's job (``shoplens index`` in the device
SDK, not available yet); it will write exactly this format.

Two ways to reach the catalog: straight to Milvus (a server, or a Lite file no
service has open), or through a running service's admin API (needed for Lite
while it is served, because a Lite file is locked to one process).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shoplens.contract.manifest import load_manifest
from shoplens.contract.schemas import MAX_UPSERT_IMAGES, CatalogImage

from shoplens.cloud.store import CatalogStore


@dataclass
class ReindexResult:
    model_id: str
    collection: str
    rows: int
    previous_collection: str | None
    previous_model_id: str | None
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


def reindex_direct(store: CatalogStore, model_id: str, rows: Path, *, drop_old: bool = False) -> ReindexResult:
    """Build, fill, verify, swap, optionally drop the old collection, all on ``store``'s Milvus."""
    previous = store.binding(refresh=True)
    target = store.create_collection(model_id, activate=False)
    n = 0
    ids: set[str] = set()
    for batch in read_rows(rows):
        n += store.upsert(target, batch)
        ids.update(img.image_id for img in batch)
    counted = store.count(target)
    if counted != len(ids):
        raise RuntimeError(
            f"new collection {target.collection} holds {counted} rows, {len(ids)} distinct images were written; "
            "not swapping (the old collection is still served)"
        )
    store.activate(target.collection)
    dropped = False
    if drop_old and previous is not None and previous.collection != target.collection:
        store.drop_collection(previous.collection)
        dropped = True
    return ReindexResult(
        model_id=model_id,
        collection=target.collection,
        rows=n,
        previous_collection=previous.collection if previous else None,
        previous_model_id=previous.model_id if previous else None,
        dropped_previous=dropped,
    )


def reindex_http(url: str, admin_key: str, model_id: str, rows: Path, *, drop_old: bool = False,
                 timeout_s: float = 60.0) -> ReindexResult:
    """The same steps through a running service's admin API."""
    import httpx

    headers = {"Authorization": f"Bearer {admin_key}"}

    def check(resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise RuntimeError(f"{resp.request.method} {resp.request.url.path}: {resp.status_code} "
                                   f"{err['code']}: {err['message']}")
            except (ValueError, KeyError):
                raise RuntimeError(f"{resp.request.method} {resp.request.url.path}: {resp.status_code}") from None
        return resp.json()

    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s) as http:
        before = check(http.get("/v1/catalog/collections"))
        previous = next((c for c in before if c["active"]), None)
        created = check(http.post("/v1/catalog/collections", json={"model_id": model_id, "activate": False}))
        name = created["collection"]
        n = 0
        for batch in read_rows(rows):
            body = {"model_id": model_id, "images": [img.model_dump(mode="json") for img in batch]}
            n += int(check(http.put("/v1/catalog/images", params={"collection": name}, json=body))["upserted"])
        check(http.post(f"/v1/catalog/collections/{name}/activate"))
        dropped = False
        if drop_old and previous is not None and previous["collection"] != name:
            check(http.delete(f"/v1/catalog/collections/{previous['collection']}"))
            dropped = True
    return ReindexResult(
        model_id=model_id,
        collection=name,
        rows=n,
        previous_collection=previous["collection"] if previous else None,
        previous_model_id=previous["model_id"] if previous else None,
        dropped_previous=dropped,
    )


def dumps(result: ReindexResult) -> str:
    return json.dumps(result.as_dict(), indent=2)
