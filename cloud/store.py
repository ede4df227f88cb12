"""The catalog store: the collections behind the alias, and every read and write of catalog rows.

The connection, backend detection and load state live in :class:`MilvusConnection`;
this class adds what a catalog is: which collection serves which model id (the
alias binding, resolved and cached), catalog writes and reads, and search.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from pymilvus import MilvusClient

from shoplens.contract.model_id import is_valid_model_id, model_id_dim
from shoplens.contract.schemas import CatalogImage, ProductHit
from shoplens.settings import Settings

from shoplens.cloud import schema as cs
from shoplens.cloud.binding import Binding
from shoplens.cloud.filters import eq_expr, has_control
from shoplens.cloud.lifecycle import ModelLifecycle
from shoplens.cloud.milvus_conn import Capabilities, MilvusConnection, Observer, native_grouping_supported
from shoplens.cloud.search_rounds import MILVUS_MAX_TOPK, Rounds, search_rounds
from shoplens.cloud.storage_probe import StorageProbe
from shoplens.cloud.store_errors import BackendUnavailable, CatalogInconsistent, InvalidRequest, NotFound

log = logging.getLogger("shoplens.cloud.store")

#: how many rows GET /v1/catalog/products/{id} returns at most
MAX_IMAGES_PER_PRODUCT = 1000


class CatalogStore(ModelLifecycle, MilvusConnection):
    """The catalog on one Milvus: collections per model id, the aliases, rows in and out (thread-safe)."""

    def __init__(self, settings: Settings, observe: Observer | None = None) -> None:
        super().__init__(settings, observe)
        self._binding: Binding | None = None
        self._binding_at = 0.0
        self._probe = StorageProbe(self, settings.collection)
        self._lifecycle_init()
        self._lite_writes = threading.Lock()

    # ---- collections and the alias ------------------------------------------------------

    def _describe(self, c: MilvusClient, name: str) -> dict[str, Any]:
        return dict(c.describe_collection(name))

    def _alias_target(self, c: MilvusClient) -> str:
        """The collection behind the alias, "" if none (describe_alias would log an error for a missing one)."""
        if not c.has_collection(self.alias):
            return ""
        return str(self._describe(c, self.alias)["collection_name"])

    def _binding_of(self, c: MilvusClient, collection: str, alias: str) -> Binding:
        props = self._describe(c, collection).get("properties") or {}
        model_id = props.get(cs.PROP_MODEL_ID)
        if not model_id:
            raise CatalogInconsistent(f"collection {collection!r} behind alias {alias!r} was not created by shoplens (no model id recorded)")
        return Binding(
            alias=alias,
            collection=collection,
            model_id=str(model_id),
            dim=int(props.get(cs.PROP_DIM, model_id_dim(str(model_id)))),
            metric=str(props.get(cs.PROP_METRIC, cs.METRIC)),
            storage=str(props.get(cs.PROP_STORAGE, "f32")),
        )

    def binding(self, *, refresh: bool = False) -> Binding | None:
        """What the alias serves now (cached ``binding_ttl_s`` so a search costs no extra round trip)."""
        now = time.monotonic()
        cached = None if refresh else self.cached_binding()
        if cached is not None:
            return cached
        with self._call("describe_alias") as c:
            target = self._alias_target(c)
            binding = self._binding_of(c, target, self.alias) if target else None
            if binding is not None:
                self._ensure_loaded(c, binding.collection)
        with self._lock:
            self._binding, self._binding_at = binding, now
        return binding

    def cached_binding(self) -> Binding | None:
        """The binding if cached and fresh, else None; never calls Milvus (safe on the event loop)."""
        with self._lock:
            if self._binding is not None and time.monotonic() - self._binding_at < self.settings.binding_ttl_s:
                return self._binding
        return None

    def require_binding(self) -> Binding:
        binding = self.binding()
        if binding is None:
            raise NotFound(f"no catalog collection is bound to {self.alias!r} yet; upsert images (admin) to create it")
        return binding

    def storage_problem(self, storage: str) -> str | None:
        """None if this backend stores ``storage`` vectors end to end, else why not (``storage_probe.py``)."""
        return self._probe.storage_problem(storage)

    def storage_for_new_collections(self) -> str:
        """The configured vector storage if this backend supports it, else f32."""
        wanted = self.settings.vector_storage
        return wanted if self.storage_problem(wanted) is None else "f32"

    def create_collection(self, model_id: str, *, activate: bool = False) -> Binding:
        """A new, empty collection for ``model_id``; bound to the alias if ``activate`` or none is bound yet."""
        if not is_valid_model_id(model_id):
            raise InvalidRequest(f"not a shoplens model id: {model_id!r}")
        dim = model_id_dim(model_id)
        name = cs.collection_name(self.alias, model_id)
        storage = self.storage_for_new_collections()
        with self._call("create_collection") as c:
            c.create_collection(
                name,
                schema=cs.build_schema(dim, storage),
                index_params=cs.build_index_params(
                    c, lite=self.lite, index_type=self.settings.index_type, params=self.settings.index_params
                ),
                consistency_level="Strong",
                properties={
                    cs.PROP_MODEL_ID: model_id,
                    cs.PROP_DIM: str(dim),
                    cs.PROP_METRIC: cs.METRIC,
                    cs.PROP_ALIAS: self.alias,
                    cs.PROP_STORAGE: storage,
                },
            )
            self._ensure_loaded(c, name)
        log.info("created collection %s for model %s (dim %d, %s vectors)", name, model_id, dim, storage)
        binding = Binding(self.alias, name, model_id, dim, cs.METRIC, storage)
        if activate or self.binding(refresh=True) is None:
            self.activate(name)
        return binding

    def collections(self) -> list[dict[str, Any]]:
        """Every collection created for this alias, with its model id, rows and whether it is served."""
        current = self.binding(refresh=True)
        out: list[dict[str, Any]] = []
        with self._call("list_collections") as c:
            for name in sorted(c.list_collections()):
                props = self._describe(c, name).get("properties") or {}
                if props.get(cs.PROP_ALIAS) != self.alias:
                    continue
                out.append(
                    {
                        "collection": name,
                        "model_id": props.get(cs.PROP_MODEL_ID),
                        "dim": int(props.get(cs.PROP_DIM, 0)),
                        "vector_storage": str(props.get(cs.PROP_STORAGE, "f32")),
                        "active": current is not None and current.collection == name,
                    }
                )
        return out

    def collection_binding(self, name: str) -> Binding:
        """The binding of one collection of this alias (404 if it is not one of ours).

        ``name`` may be an alias: it is resolved to the collection it points at, so every
        caller (writes, activation, drops) acts on, and compares, physical collections.
        """
        with self._call("describe_collection") as c:
            if not c.has_collection(name):
                raise NotFound(f"no collection {name!r}")
            description = self._describe(c, name)
            physical = str(description.get("collection_name") or name)
            props = description.get("properties") or {}
            if props.get(cs.PROP_ALIAS) != self.alias:
                raise NotFound(f"collection {name!r} does not belong to alias {self.alias!r}")
            binding = self._binding_of(c, physical, self.alias)
            self._ensure_loaded(c, physical)
        return binding

    def _aliases_of(self, c: MilvusClient, collection: str) -> list[str]:
        """Every alias pointing at ``collection`` (this service's and any other)."""
        found = c.list_aliases(collection)
        return [str(a) for a in (found.get("aliases") if isinstance(found, dict) else found) or []]

    def activate(self, name: str) -> Binding:
        """Serve collection ``name`` and make its model the current one (the previous current stays
        served as supported, so apps still on it keep working)."""
        return self.serve(name, promote=True)

    def drop_collection(self, name: str) -> str:
        """Drop a collection of this alias that nothing serves; returns the physical name dropped.

        ``name`` is resolved first (it may be an alias), and the drop is refused while any
        alias points at the collection: the served one under any of its names, a model that is
        still served (retire it first), and one another service reaches through an alias of its
        own. A retired model's alias goes with its collection (it can no longer be re-activated).
        """
        target = self.collection_binding(name)
        current = self.binding(refresh=True)
        if current is not None and current.collection == target.collection:
            raise InvalidRequest(f"collection {name!r} ({target.collection}) is the one being served; activate another first")
        with self._call("drop_collection") as c:
            aliases = [a for a in self._aliases_of(c, target.collection) if not self.release_retired_alias(c, a)]
            if aliases:
                raise InvalidRequest(f"collection {target.collection!r} is reached through alias(es) {', '.join(sorted(aliases))}; "
                    "point them elsewhere first")
            c.drop_collection(target.collection)
        with self._lock:
            self._loaded.discard(target.collection)
        log.info("dropped collection %s", target.collection)
        return target.collection

    # ---- writes ----------------------------------------------------------------------

    def _write_slot(self) -> Any:
        """On a Milvus Lite file, one write or flush at a time (a server takes them concurrently).

        Why: Milvus Lite's engine serves each gRPC call on its own thread and takes no lock
        between a write and a flush. A write appends its WAL record, then applies it to the
        memtable; a flush in between swaps in a fresh memtable and WAL and deletes the old WAL
        once the old memtable is on disk. The write then lands in the new memtable with its
        record in the deleted WAL: acknowledged and readable, yet a ``kill -9`` loses it. Two
        writes at once likewise interleave records in one WAL, and recovery stops at the torn
        one. Writes and flushes (ours, and the ones a write triggers inside Lite) therefore take
        this slot in turn; docs/reliability.md has what the soak lost before and after.
        """
        return self._lite_writes if self.lite else contextlib.nullcontext()

    def upsert(self, binding: Binding, images: Sequence[CatalogImage]) -> int:
        """Insert-or-replace by image id; visible to this process's next read once this returns.

        Reads use ``read_consistency`` (Session by default): pymilvus sends the
        timestamp of this client's last write with each read, so Milvus waits
        exactly until that write is searchable, and no longer. Strong would
        wait for the next time tick (~200 ms on a 2.3 server) on every search.
        """
        rows = [cs.image_to_row(img, binding.dim, i, binding.storage) for i, img in enumerate(images)]
        with self._write_slot():
            result = self._on_collection("upsert", binding.collection, lambda c: c.upsert(binding.collection, rows))
        applied = int(result.get("upsert_count", len(rows)) if isinstance(result, dict) else len(rows))
        if applied != len(rows):  # never acknowledge rows Milvus did not take
            log.error("Milvus applied %d of %d upserted rows in %s", applied, len(rows), binding.collection)
            raise BackendUnavailable(f"the vector database applied {applied} of {len(rows)} rows; retry the request")
        return applied

    def flush(self, binding: Binding) -> None:
        """Seal the collection's growing segments so Milvus indexes them.

        Until then Milvus searches freshly written rows by brute force, which Milvus Lite
        feels most (docs/cloud.md, 'Automatic flush'). The service flushes by itself
        (``flusher.py``); bulk writers call this once at the end of an import, not per batch.
        """
        self.flush_collection(binding.collection)

    def flush_collection(self, name: str) -> None:
        """``flush`` by collection name (the automatic flusher keeps names, not bindings).

        Under the write slot (see ``_write_slot``) and the load lock: a load concurrent with a
        flush hung a Milvus Lite file (the first requests after a restart loading the model
        registry while the start-up flush ran)."""
        with self._write_slot(), self._loading, self._call("flush") as c:
            c.flush(name)

    def _ids_where(self, c: MilvusClient, collection: str, expr: str) -> list[str]:
        rows = c.query(collection, filter=expr, output_fields=[cs.PK], limit=MAX_IMAGES_PER_PRODUCT * 16,
                       consistency_level=self.settings.read_consistency)
        return [str(r.get(cs.PK) or r.get("id")) for r in rows]

    def delete_image(self, binding: Binding, image_id: str) -> bool:
        """Delete one image; False when it did not exist (the service answers 404)."""
        if has_control(image_id):  # upsert refuses such ids, so it cannot exist
            return False

        def delete(c: MilvusClient) -> bool:
            if not self._ids_where(c, binding.collection, eq_expr(cs.PK, image_id)):
                return False
            c.delete(binding.collection, ids=[image_id])
            self._sync(c, binding.collection)  # a 2.3 server returns no timestamp for a delete
            return True

        with self._write_slot():
            return self._on_collection("delete", binding.collection, delete)

    def delete_product(self, binding: Binding, product_id: str) -> int:
        """Delete every image of a product; returns how many there were."""
        if has_control(product_id):
            return 0

        def delete(c: MilvusClient) -> int:
            ids = self._ids_where(c, binding.collection, eq_expr("product_id", product_id))
            if ids:
                c.delete(binding.collection, ids=ids)
                self._sync(c, binding.collection)  # a 2.3 server returns no timestamp for a delete
            return len(ids)

        with self._write_slot():
            return self._on_collection("delete", binding.collection, delete)

    # ---- reads -----------------------------------------------------------------------

    def product_images(self, binding: Binding, product_id: str) -> list[dict[str, Any]]:
        if has_control(product_id):
            return []
        rows = self._on_collection("query", binding.collection, lambda c: c.query(
            binding.collection,
            filter=eq_expr("product_id", product_id),
            output_fields=[cs.PK, *cs.OUTPUT_FIELDS],
            limit=MAX_IMAGES_PER_PRODUCT,
            consistency_level=self.settings.read_consistency,
        ))
        return sorted((cs.row_to_image_info(r) for r in rows), key=lambda r: r["image_id"])

    def count(self, binding: Binding) -> int:
        """Exact row count (count(*); collection stats lag until a flush)."""
        rows = self._on_collection("count", binding.collection, lambda c: c.query(
            binding.collection, filter="", output_fields=["count(*)"], consistency_level=self.settings.read_consistency))
        return int(rows[0]["count(*)"]) if rows else 0

    def segment_rows(self, binding: Binding) -> list[int] | None:
        """Rows of each sealed segment loaded for search, largest first; None on Milvus Lite (it does not report segments).

        Why it is worth watching: a search visits every sealed segment's index and
        merges, so the same rows in many small segments cost more per search than in a
        few large ones (measured at 1M: p50 6.5 ms over 22 segments, 5.7 over 5;
        docs/cloud.md, "Segment size").
        """
        if self.lite:
            return None
        with self._call("segments") as c:
            segments = c.list_loaded_segments(binding.collection)
        return sorted((int(s.num_rows) for s in segments), reverse=True)

    def _rounds(self, binding: Binding, vectors: np.ndarray, top_k: int, expr: str, min_score: float | None) -> Rounds:
        return search_rounds(self.settings, self.capabilities.native_grouping, binding, vectors, top_k, expr, min_score)

    def search(
        self,
        binding: Binding,
        vectors: np.ndarray,
        *,
        top_k: int,
        expr: str = "",
        min_score: float | None = None,
    ) -> tuple[list[list[ProductHit]], str]:
        """Distinct products per query vector (``top_k`` whenever the catalog holds them), best image each.

        Returns the hits and the grouping path ("native": Milvus grouped;
        "overfetch": the service grouped windows of images, see ``_search_rounds``).
        Results are de-duplicated by product either way, so a backend that ignores
        grouping can never return one product twice. Usually one round trip for all vectors.
        """
        rounds = self._rounds(binding, vectors, top_k, expr, min_score)
        try:
            request = next(rounds)
            while True:
                raw = self._on_collection("search", binding.collection, lambda c: c.search(**request))
                request = rounds.send(raw)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def search_async(
        self,
        binding: Binding,
        vectors: np.ndarray,
        *,
        top_k: int,
        expr: str = "",
        min_score: float | None = None,
    ) -> tuple[list[list[ProductHit]], str]:
        """``search`` over the asyncio client: the same rounds, no thread hop."""
        rounds = self._rounds(binding, vectors, top_k, expr, min_score)
        try:
            request = next(rounds)
            while True:
                raw = await self._aon_collection(
                    "search", binding.collection, lambda c: c.search(**request, timeout=self.settings.milvus_timeout_s))
                request = rounds.send(raw)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

__all__ = ["MILVUS_MAX_TOPK", "Binding", "Capabilities", "CatalogStore", "native_grouping_supported"]
