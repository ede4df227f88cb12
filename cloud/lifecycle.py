"""Several model ids served at once: routing a vector by its model id, and each model's lifecycle.

A mixin of :class:`~shoplens.cloud.store.CatalogStore` (it uses the store's
connection, alias and collection helpers). Each served model id reaches its
collection through its own alias (``registry.model_alias``); the main alias
(``SHOPLENS_COLLECTION``) follows the *current* model, so tools that only know
the main alias keep working. See ``registry.py`` for the statuses.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from pymilvus import MilvusClient

from shoplens.contract.service import ModelInfo

from shoplens.cloud.binding import Binding
from shoplens.cloud.registry import ModelEntry, ModelStatus, Registry, model_alias, parse_sunset
from shoplens.cloud.store_errors import InvalidRequest, ModelRetired, ModelUnknown, NotFound

if TYPE_CHECKING:  # the mixin's host
    from shoplens.cloud.store import CatalogStore

log = logging.getLogger("shoplens.cloud.store")


_ORDER = {ModelStatus.CURRENT: 0, ModelStatus.SUPPORTED: 1, ModelStatus.DEPRECATED: 2, ModelStatus.RETIRED: 3}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ModelLifecycle:
    """Registry-backed routing and lifecycle; mixed into CatalogStore."""

    def _lifecycle_init(self: CatalogStore) -> None:
        self._registry = Registry(self.alias, self.lite)
        self._models: dict[str, ModelEntry] | None = None
        self._models_at = 0.0
        self._routes: dict[str, tuple[Binding, float]] = {}

    def _forget_routes(self: CatalogStore) -> None:
        with self._lock:
            self._models, self._routes, self._binding = None, {}, None

    # ---- reading the registry -------------------------------------------------------------

    def models(self: CatalogStore, *, refresh: bool = False) -> dict[str, ModelEntry]:
        """Every registered model id (cached ``binding_ttl_s``). A catalog made before the registry
        existed is adopted: the model its main alias serves becomes the current one."""
        with self._lock:
            fresh = self._models is not None and time.monotonic() - self._models_at < self.settings.binding_ttl_s
            if fresh and not refresh:
                return dict(self._models or {})
        with self._call("registry") as c:
            entries = self._entries(c)
            if not entries:
                entries = self._adopt_main_alias(c)
        with self._lock:
            self._models, self._models_at = entries, time.monotonic()
        return dict(entries)

    def _entries(self: CatalogStore, c: MilvusClient) -> dict[str, ModelEntry]:
        """The registry's rows, read with Strong consistency (loaded once per process like every collection;
        loaded again when Milvus calls it released, as Lite did on a file reopened in the same process)."""
        if not c.has_collection(self._registry.name):
            return {}
        self._ensure_loaded(c, self._registry.name)
        return self._on_collection("registry", self._registry.name, self._registry.entries)

    def _adopt_main_alias(self: CatalogStore, c: MilvusClient) -> dict[str, ModelEntry]:
        target = self._alias_target(c)
        if not target:
            return {}
        binding = self._binding_of(c, target, self.alias)
        self._point_alias(c, model_alias(self.alias, binding.model_id), target)
        entry = ModelEntry(binding.model_id, ModelStatus.CURRENT, updated_at=_now_ms())
        with self._write_slot():
            self._registry.put(c, entry)
        log.info("registered model %s (served by %s) as current", binding.model_id, target)
        return {binding.model_id: entry}

    def model_infos(self: CatalogStore) -> list[ModelInfo]:
        """Every registered model for ``GET /v1/models``: current first, then supported, deprecated, retired."""
        entries = sorted(self.models(refresh=True).values(), key=lambda e: (_ORDER[e.status], e.model_id))
        return [model_info(self, e) for e in entries]

    def cached_models(self: CatalogStore) -> dict[str, ModelEntry]:
        """The registry as last read (possibly stale or empty); never calls Milvus."""
        with self._lock:
            return dict(self._models or {})

    def current_model(self: CatalogStore) -> ModelEntry | None:
        return next((e for e in self.models().values() if e.status is ModelStatus.CURRENT), None)

    def _point_alias(self: CatalogStore, c: MilvusClient, alias: str, collection: str) -> None:
        """``alias`` -> ``collection``, creating the alias if needed (alter_alias is atomic for readers)."""
        if not c.has_collection(alias):
            c.create_alias(collection, alias)
        elif str(self._describe(c, alias)["collection_name"]) != collection:
            c.alter_alias(collection, alias)

    # ---- routing a request by model id -------------------------------------------------------

    def model_binding(self: CatalogStore, model_id: str) -> Binding:
        """The collection serving ``model_id`` (through its alias), loaded; cached ``binding_ttl_s``."""
        with self._lock:
            hit = self._routes.get(model_id)
            if hit is not None and time.monotonic() - hit[1] < self.settings.binding_ttl_s:
                return hit[0]
        alias = model_alias(self.alias, model_id)
        with self._call("describe_alias") as c:
            if not c.has_collection(alias):
                raise NotFound(f"model {model_id!r} has no collection any more (it was dropped)")
            collection = str(self._describe(c, alias)["collection_name"])
            binding = self._binding_of(c, collection, alias)
            self._ensure_loaded(c, collection)
        with self._lock:
            self._routes[model_id] = (binding, time.monotonic())
        return binding

    def route(self: CatalogStore, model_id: str) -> tuple[Binding, ModelEntry]:
        """Where a vector of ``model_id`` is searched; 409 for an unknown model, 410 for a retired one."""
        entries = self.models()
        entry = entries.get(model_id)
        current = next((e for e in entries.values() if e.status is ModelStatus.CURRENT), None)
        if entry is None:
            if not entries:
                raise NotFound(f"no catalog collection is bound to {self.alias!r} yet; upsert images (admin) to create it")
            raise ModelUnknown(model_id, current.model_id if current else None, sorted(
                m for m, e in entries.items() if e.status.served))
        if entry.status is ModelStatus.RETIRED:
            raise ModelRetired(model_id, current.model_id if current else None, current.bundle_url if current else "")
        return self.model_binding(model_id), entry

    def cached_route(self: CatalogStore, model_id: str) -> tuple[Binding, ModelEntry] | None:
        """``route`` from the caches alone, or None (never calls Milvus: safe on the event loop)."""
        with self._lock:
            fresh = self._models is not None and time.monotonic() - self._models_at < self.settings.binding_ttl_s
            entry = (self._models or {}).get(model_id) if fresh else None
            hit = self._routes.get(model_id)
            if entry is None or not entry.status.served or hit is None:
                return None
            if time.monotonic() - hit[1] >= self.settings.binding_ttl_s:
                return None
            return hit[0], entry

    def served_bindings(self: CatalogStore) -> list[Binding]:
        """Every registered model's collection that still exists (retired ones too: a deletion must
        reach them, or re-activating one would bring deleted products back)."""
        out = []
        for model_id in self.models():
            try:
                out.append(self.model_binding(model_id))
            except NotFound:
                continue
        return out

    # ---- changing the registry ----------------------------------------------------------------

    def serve(self: CatalogStore, name: str, *, promote: bool) -> Binding:
        """Serve collection ``name`` for its model id: through the model's alias, registered as
        supported (or kept at its status), or as current with ``promote`` (or when nothing is current)."""
        target = self.collection_binding(name)
        with self._call("serve") as c:
            entries = self._entries(c) or self._adopt_main_alias(c)
            current = next((e for e in entries.values() if e.status is ModelStatus.CURRENT), None)
            old = entries.get(target.model_id)
            self._point_alias(c, model_alias(self.alias, target.model_id), target.collection)
            if promote or current is None or current.model_id == target.model_id:
                base = old or ModelEntry(target.model_id, ModelStatus.CURRENT)
                updates = [base.with_status(ModelStatus.CURRENT, sunset="", deprecated_at=0)]
                if current is not None and current.model_id != target.model_id:
                    updates.append(current.with_status(ModelStatus.SUPPORTED))
                self._point_alias(c, self.alias, target.collection)
            elif old is not None and old.status.served:
                updates = [old.with_status(old.status)]
            else:
                updates = [(old or ModelEntry(target.model_id, ModelStatus.SUPPORTED)).with_status(ModelStatus.SUPPORTED)]
            with self._write_slot():
                self._registry.put(c, *updates)
        self._forget_routes()
        log.info("model %s served by %s (%s)", target.model_id, target.collection, updates[0].status.value)
        return target

    def promote(self: CatalogStore, model_id: str, *, bundle_url: str | None = None) -> ModelEntry:
        """Make ``model_id`` current (the one new apps should use); the previous current stays supported."""
        entry = self._registered(model_id)
        if entry.status is ModelStatus.RETIRED:
            raise InvalidRequest(f"model {model_id!r} is retired; make it supported again first")
        self.serve(self.model_binding(model_id).collection, promote=True)
        if bundle_url is not None:
            return self._update(model_id, bundle_url=bundle_url)
        return self.models(refresh=True)[model_id]

    def set_status(self: CatalogStore, model_id: str, status: ModelStatus, *, sunset: str | None = None,
                   bundle_url: str | None = None) -> ModelEntry:
        """Deprecate (needs a sunset date), retire, or support again (re-activation) a model that is not current."""
        entry = self._registered(model_id)
        if status is ModelStatus.CURRENT:
            return self.promote(model_id, bundle_url=bundle_url)
        if entry.status is ModelStatus.CURRENT:
            raise InvalidRequest(f"model {model_id!r} is the current one; promote another model first")
        changes: dict[str, Any] = {}
        if status is ModelStatus.DEPRECATED:
            if not sunset:
                raise InvalidRequest("deprecating a model needs a sunset date (YYYY-MM-DD): when it will be retired")
            try:
                changes["sunset"] = parse_sunset(sunset)
            except ValueError:
                raise InvalidRequest(f"sunset must be a date YYYY-MM-DD, got {sunset!r}") from None
            changes["deprecated_at"] = entry.deprecated_at or int(time.time())
        elif status is ModelStatus.SUPPORTED:
            self.model_binding(model_id)  # re-activation needs its collection (404 once dropped)
            changes.update(sunset="", deprecated_at=0)
        if bundle_url is not None:
            changes["bundle_url"] = bundle_url
        return self._update(model_id, status=status, **changes)

    def _registered(self: CatalogStore, model_id: str) -> ModelEntry:
        entry = self.models(refresh=True).get(model_id)
        if entry is None:
            raise NotFound(f"model {model_id!r} is not registered")
        return entry

    def _update(self: CatalogStore, model_id: str, *, status: ModelStatus | None = None, **changes: Any) -> ModelEntry:
        entry = self._registered(model_id)
        updated = entry.with_status(status or entry.status, **changes)
        with self._call("registry") as c, self._write_slot():
            self._registry.put(c, updated)
        self._forget_routes()
        log.info("model %s is %s", model_id, updated.status.value)
        return updated

    def release_retired_alias(self: CatalogStore, c: MilvusClient, alias: str) -> bool:
        """Drop ``alias`` if it is the alias of a retired model (its collection may then be dropped)."""
        for entry in self._entries(c).values():
            if entry.status is ModelStatus.RETIRED and model_alias(self.alias, entry.model_id) == alias:
                c.drop_alias(alias)
                self._forget_routes()
                return True
        return False


def model_info(store: CatalogStore, entry: ModelEntry) -> ModelInfo:
    """The contract's view of a registered model (a retired model whose collection was dropped has none)."""
    try:
        b = store.model_binding(entry.model_id)
        dim, metric, collection = b.dim, b.metric, b.collection
    except NotFound:
        dim, metric, collection = 0, "COSINE", ""
    return ModelInfo(model_id=entry.model_id, dim=dim, metric=metric, collection=collection,
                     active=entry.status is ModelStatus.CURRENT, status=entry.status.value,
                     sunset=entry.sunset or None, bundle_url=entry.bundle_url or None)
