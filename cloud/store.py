"""The catalog store: every Milvus call the service makes, behind one small class.

Why a class of its own: the HTTP layer should not know whether it talks to a
Lite file or a cluster. This is where backend differences are detected (from
the server version, never assumed), where connection failures become a 503,
and where the alias -> collection -> model id binding is resolved and cached.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymilvus import AsyncMilvusClient, DataType, MilvusClient
from pymilvus.exceptions import MilvusUnavailableException

from shoplens.contract.errors import ErrorCode
from shoplens.contract.model_id import is_valid_model_id, model_id_dim
from shoplens.contract.schemas import CatalogImage, ProductHit
from shoplens.settings import Settings

from shoplens.cloud import schema as cs
from shoplens.cloud.errors import ApiError, BackendUnavailable
from shoplens.cloud.filters import eq_expr, has_control, literal

log = logging.getLogger("shoplens.cloud.store")

#: Milvus refuses a larger limit (topk) in one search
MILVUS_MAX_TOPK = 16384
#: how many rows GET /v1/catalog/products/{id} returns at most
MAX_IMAGES_PER_PRODUCT = 1000

Observer = Callable[[str, float], None]


@dataclass(frozen=True)
class Binding:
    """The collection the alias points at, and the vector space it holds."""

    alias: str
    collection: str
    model_id: str
    dim: int
    metric: str
    storage: str = "f32"  # how the collection stores vectors (schema.STORAGE_TYPES)


@dataclass(frozen=True)
class Capabilities:
    backend: str  # "lite" | "server"
    server_version: str
    native_grouping: bool


def _is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause chain) means "Milvus cannot be reached"."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (MilvusUnavailableException, ConnectionError, TimeoutError)):
            return True
        code = getattr(cur, "code", None)
        if callable(code):  # grpc.RpcError
            try:
                name = getattr(code(), "name", "")
            except Exception:  # noqa: BLE001 - a broken error object is not "unavailable"
                name = ""
            if name in {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}:
                return True
        msg = str(getattr(cur, "message", "") or cur).lower()
        if any(s in msg for s in ("fail connecting", "failed to connect", "connection refused", "unavailable")):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def parse_server_version(version: str) -> tuple[int, int, int] | None:
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def native_grouping_supported(version: str) -> bool:
    """Grouping search by a VARCHAR field works on Lite and on servers >= 2.4.

    Milvus 2.3.5 accepts ``group_by_field`` and silently ignores it (repeated
    products come back), so an unknown or older version gets the over-fetch path.
    """
    if version.startswith("milvus_lite"):
        return True
    parsed = parse_server_version(version)
    return parsed is not None and parsed >= (2, 4, 0)


#: FLOAT16_VECTOR is trusted from this server version on (see CatalogStore.storage_problem)
F16_MIN_SERVER = (2, 4, 0)


class CatalogStore:
    """Thread-safe facade over one ``MilvusClient`` (pymilvus clients are safe to share)."""

    def __init__(self, settings: Settings, observe: Observer | None = None) -> None:
        self.settings = settings
        self.uri = settings.resolved_milvus_uri()
        self.lite = settings.milvus_is_lite
        self.alias = settings.collection
        self._observe = observe or (lambda op, s: None)
        self._client: MilvusClient | None = None
        # the search path's asyncio client: bound to the event loop it was created on
        self._aclient: AsyncMilvusClient | None = None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._caps: Capabilities | None = None
        self._lock = threading.RLock()
        self._binding: Binding | None = None
        self._binding_at = 0.0
        self._loaded: set[str] = set()
        self._storage_checked: dict[str, str | None] = {}  # storage -> None (works) or why not

    # ---- connection -------------------------------------------------------------------

    def _connect(self) -> MilvusClient:
        with self._lock:
            if self._client is not None:
                return self._client
            if self.lite:
                if not self.uri.endswith(".db"):
                    raise ApiError(
                        ErrorCode.INTERNAL, "a Milvus Lite URI must be a file path ending in .db (SHOPLENS_MILVUS_URI)"
                    )
                from pathlib import Path

                Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            token = self.settings.milvus_token.get_secret_value()
            t0 = time.perf_counter()
            try:
                client = MilvusClient(uri=self.uri, token=token, timeout=self.settings.milvus_timeout_s)
                version = str(client.get_server_version())
            except Exception as exc:  # noqa: BLE001 - every connect failure is "unreachable"
                log.warning("cannot connect to Milvus at %s: %s", self._safe_uri(), type(exc).__name__)
                raise BackendUnavailable(f"cannot connect to Milvus ({'Lite file' if self.lite else 'server'})") from None
            finally:
                self._observe("connect", time.perf_counter() - t0)
            self._caps = Capabilities(
                backend="lite" if self.lite else "server",
                server_version=version,
                native_grouping=native_grouping_supported(version),
            )
            log.info(
                "connected to Milvus %s (%s); grouping: %s",
                version,
                self._caps.backend,
                "native" if self._caps.native_grouping else "overfetch",
            )
            self._client = client
            return client

    def _safe_uri(self) -> str:
        return self.uri if self.lite else re.sub(r"//[^@/]*@", "//***@", self.uri)

    @contextmanager
    def _guarded(self, op: str) -> Iterator[None]:
        """Time the block as ``op``; turn "cannot reach Milvus" into a 503 (either client)."""
        t0 = time.perf_counter()
        try:
            yield
        except ApiError:
            raise
        except Exception as exc:
            if _is_unavailable(exc):
                log.warning("Milvus unreachable during %s: %s", op, type(exc).__name__)
                raise BackendUnavailable() from None
            raise
        finally:
            self._observe(op, time.perf_counter() - t0)

    @contextmanager
    def _call(self, op: str) -> Iterator[MilvusClient]:
        """Yield the sync client inside ``_guarded(op)``."""
        client = self._connect()
        with self._guarded(op):
            yield client

    async def _async_client(self) -> AsyncMilvusClient:
        """The asyncio client of the running loop (created on first use in that loop).

        Why a second client: a sync pymilvus call from an async endpoint must hop to
        the thread pool and back (15-20% of the service's CPU per search, profiled in
        benchmarks/http_overhead.py); grpc.aio awaits the reply on the loop itself.
        Its channel belongs to one loop, so a new loop (tests, a restarted server)
        gets a new client. Capabilities and the Lite server come from the sync client.
        """
        loop = asyncio.get_running_loop()
        if self._aclient is not None and self._aclient_loop is loop:
            return self._aclient
        self._connect()
        token = self.settings.milvus_token.get_secret_value()
        client = AsyncMilvusClient(uri=self.uri, token=token, timeout=self.settings.milvus_timeout_s)
        self._aclient, self._aclient_loop = client, loop
        return client

    @asynccontextmanager
    async def _acall(self, op: str) -> AsyncIterator[AsyncMilvusClient]:
        """Yield the asyncio client inside ``_guarded(op)`` (creating it is part of the call)."""
        with self._guarded(op):
            yield await self._async_client()

    async def aclose(self) -> None:
        """Close the asyncio client (call from the loop that used it, before ``close``)."""
        client, self._aclient, self._aclient_loop = self._aclient, None, None
        if client is not None:
            try:
                await client.close()
            except Exception as exc:  # noqa: BLE001 - shutting down: a dead channel is fine
                log.debug("closing the asyncio Milvus client: %s", type(exc).__name__)

    @property
    def capabilities(self) -> Capabilities:
        self._connect()
        assert self._caps is not None
        return self._caps

    def ping(self) -> str:
        """The server version; raises BackendUnavailable when Milvus does not answer."""
        with self._call("ping") as c:
            return str(c.get_server_version())

    def close(self) -> None:
        """Release the client; for Lite also the in-process server, so the file can be reopened."""
        with self._lock:
            client, self._client = self._client, None
            self._binding = None
            self._loaded.clear()
        if client is not None:
            try:
                client.close()
            finally:
                if self.lite:
                    from milvus_lite.server_manager import server_manager_instance

                    server_manager_instance.release_server(self.uri)

    # ---- collections and the alias ------------------------------------------------------

    def _ensure_loaded(self, c: MilvusClient, name: str) -> None:
        """Load once per process, then one Strong read: every write acknowledged before this
        process started (by a previous run, or another instance) is then visible to the
        Session-consistency reads that follow, which only wait for this process's own writes."""
        if name not in self._loaded:
            c.load_collection(name)
            self._sync(c, name)
            self._loaded.add(name)

    @staticmethod
    def _sync(c: MilvusClient, name: str) -> None:
        """One Strong read: afterwards every acknowledged write is visible to the reads that follow."""
        c.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")

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
            raise ApiError(
                ErrorCode.INTERNAL,
                f"collection {collection!r} behind alias {alias!r} was not created by shoplens (no model id recorded)",
            )
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
            raise ApiError(
                ErrorCode.NOT_FOUND,
                f"no catalog collection is bound to {self.alias!r} yet; upsert images (admin) to create it",
            )
        return binding

    def storage_problem(self, storage: str) -> str | None:
        """None if this backend stores ``storage`` vectors end to end, else why not (probed once per process).

        Measured here: Milvus Lite 3.2 rejects FLOAT16_VECTOR; a 2.3.5 server
        stores it, but its searches return wrong neighbours *intermittently*
        (with pymilvus 3.0.2), so a probe alone could pass by luck: servers older
        than 2.4 (where FLOAT16_VECTOR became generally available) are refused by
        version, and everything else must pass the probe: a throw-away 16-d
        collection with the configured index, rows inserted, two rows that must
        find themselves with cosine 1, then dropped.
        """
        if storage == "f32":
            return None
        if storage in self._storage_checked:
            return self._storage_checked[storage]
        field_type, dtype = cs.STORAGE_TYPES[storage]
        caps = self.capabilities
        parsed = parse_server_version(caps.server_version)
        if caps.backend == "server" and (parsed is None or parsed < F16_MIN_SERVER):
            problem = (f"{field_type.name} needs a Milvus server >= {'.'.join(map(str, F16_MIN_SERVER))} "
                       f"(this is {caps.server_version}: measured on 2.3.5, rows are stored but searches return "
                       "wrong neighbours intermittently)")
            log.warning("vector storage %s unavailable, new collections store f32: %s", storage, problem)
            self._storage_checked[storage] = problem
            return problem
        name = f"{self.alias}__probe_{storage}_{time.time_ns()}"
        problem = None
        with self._call("probe_storage") as c:
            try:
                schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field("id", DataType.INT64, is_primary=True)
                schema.add_field(cs.VECTOR, field_type, dim=16)
                index = cs.build_index_params(c, lite=self.lite, index_type=self.settings.index_type,
                                              params=self.settings.index_params)
                c.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
                rng = np.random.default_rng(0)
                x = rng.normal(size=(16, 16))
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                c.insert(name, [{"id": i, cs.VECTOR: x[i].astype(dtype)} for i in range(len(x))])
                hits = c.search(name, data=cs.as_stored(x[[3, 11]], storage), limit=2, anns_field=cs.VECTOR,
                                consistency_level="Strong", search_params={"metric_type": cs.METRIC, "params": {}})
                got = [(int(h[0]["id"]), round(float(h[0]["distance"]), 3)) for h in hits if h]
                if [g[0] for g in got] != [3, 11] or any(abs(g[1] - 1.0) > 1e-2 for g in got):
                    # measured on a 2.3.5 server with pymilvus 3.0.2: rows are stored intact, but a
                    # search finds the wrong neighbours or a self-similarity of ~0.6
                    problem = (f"{field_type.name} stores but searches wrongly on {self.capabilities.backend} "
                               f"{self.capabilities.server_version} (self-search gave {got}, expected [(3, 1.0), (11, 1.0)])")
            except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
                problem = f"{field_type.name} not usable on {self.capabilities.backend} {self.capabilities.server_version}: " + \
                    (str(getattr(exc, "message", "") or exc).splitlines() or [type(exc).__name__])[0][:200]
            finally:
                try:
                    if c.has_collection(name):
                        c.drop_collection(name)
                except Exception:  # noqa: BLE001 - a leftover probe collection is harmless
                    log.warning("could not drop probe collection %s", name)
        if problem:
            log.warning("vector storage %s unavailable, new collections store f32: %s", storage, problem)
        self._storage_checked[storage] = problem
        return problem

    def storage_for_new_collections(self) -> str:
        """The configured vector storage if this backend supports it, else f32."""
        wanted = self.settings.vector_storage
        return wanted if self.storage_problem(wanted) is None else "f32"

    def create_collection(self, model_id: str, *, activate: bool = False) -> Binding:
        """A new, empty collection for ``model_id``; bound to the alias if ``activate`` or none is bound yet."""
        if not is_valid_model_id(model_id):
            raise ApiError(ErrorCode.VALIDATION_ERROR, f"not a shoplens model id: {model_id!r}")
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
        """The binding of one collection of this alias (404 if it is not one of ours)."""
        with self._call("describe_collection") as c:
            if not c.has_collection(name):
                raise ApiError(ErrorCode.NOT_FOUND, f"no collection {name!r}")
            props = self._describe(c, name).get("properties") or {}
            if props.get(cs.PROP_ALIAS) != self.alias:
                raise ApiError(ErrorCode.NOT_FOUND, f"collection {name!r} does not belong to alias {self.alias!r}")
            binding = self._binding_of(c, name, self.alias)
            self._ensure_loaded(c, name)
        return binding

    def activate(self, name: str) -> Binding:
        """Point the alias at ``name`` in one Milvus call (alter_alias is atomic for readers)."""
        target = self.collection_binding(name)
        with self._call("alter_alias") as c:
            current = self._alias_target(c)
            if not current:
                c.create_alias(name, self.alias)
            elif current != name:
                c.alter_alias(name, self.alias)
        log.info("alias %s now serves %s (model %s)", self.alias, name, target.model_id)
        with self._lock:
            self._binding, self._binding_at = target, time.monotonic()
        return target

    def drop_collection(self, name: str) -> None:
        """Drop a collection of this alias that is not being served."""
        target = self.collection_binding(name)
        current = self.binding(refresh=True)
        if current is not None and current.collection == target.collection:
            raise ApiError(
                ErrorCode.VALIDATION_ERROR, f"collection {name!r} is the one being served; activate another first"
            )
        with self._call("drop_collection") as c:
            c.drop_collection(name)
        self._loaded.discard(name)
        log.info("dropped collection %s", name)

    # ---- writes ----------------------------------------------------------------------

    def upsert(self, binding: Binding, images: Sequence[CatalogImage]) -> int:
        """Insert-or-replace by image id; visible to this process's next read once this returns.

        Reads use ``read_consistency`` (Session by default): pymilvus sends the
        timestamp of this client's last write with each read, so Milvus waits
        exactly until that write is searchable, and no longer. Strong would
        wait for the next time tick (~200 ms on a 2.3 server) on every search.
        """
        rows = [cs.image_to_row(img, binding.dim, i, binding.storage) for i, img in enumerate(images)]
        with self._call("upsert") as c:
            result = c.upsert(binding.collection, rows)
        return int(result.get("upsert_count", len(rows)) if isinstance(result, dict) else len(rows))

    def flush(self, binding: Binding) -> None:
        """Seal the collection's growing segments so Milvus indexes them.

        Until then Milvus Lite searches freshly written rows by brute force
        (measured: ~400 ms per query right after upserting 3k 1024-d rows,
        ~100 ms right after a flush, ~7 ms a few seconds later). Bulk writers
        call this once at the end of an import, not per batch.
        """
        with self._call("flush") as c:
            c.flush(binding.collection)

    def _ids_where(self, c: MilvusClient, collection: str, expr: str) -> list[str]:
        rows = c.query(collection, filter=expr, output_fields=[cs.PK], limit=MAX_IMAGES_PER_PRODUCT * 16,
                       consistency_level=self.settings.read_consistency)
        return [str(r.get(cs.PK) or r.get("id")) for r in rows]

    def delete_image(self, binding: Binding, image_id: str) -> bool:
        """Delete one image; False when it did not exist (the service answers 404)."""
        if has_control(image_id):  # upsert refuses such ids, so it cannot exist
            return False
        with self._call("delete") as c:
            if not self._ids_where(c, binding.collection, eq_expr(cs.PK, image_id)):
                return False
            c.delete(binding.collection, ids=[image_id])
            self._sync(c, binding.collection)  # a 2.3 server returns no timestamp for a delete
        return True

    def delete_product(self, binding: Binding, product_id: str) -> int:
        """Delete every image of a product; returns how many there were."""
        if has_control(product_id):
            return 0
        with self._call("delete") as c:
            ids = self._ids_where(c, binding.collection, eq_expr("product_id", product_id))
            if ids:
                c.delete(binding.collection, ids=ids)
                self._sync(c, binding.collection)  # a 2.3 server returns no timestamp for a delete
        return len(ids)

    # ---- reads -----------------------------------------------------------------------

    def product_images(self, binding: Binding, product_id: str) -> list[dict[str, Any]]:
        if has_control(product_id):
            return []
        with self._call("query") as c:
            rows = c.query(
                binding.collection,
                filter=eq_expr("product_id", product_id),
                output_fields=[cs.PK, *cs.OUTPUT_FIELDS],
                limit=MAX_IMAGES_PER_PRODUCT,
                consistency_level=self.settings.read_consistency,
            )
        return sorted((cs.row_to_image_info(r) for r in rows), key=lambda r: r["image_id"])

    def count(self, binding: Binding) -> int:
        """Exact row count (count(*); collection stats lag until a flush)."""
        with self._call("count") as c:
            rows = c.query(binding.collection, filter="", output_fields=["count(*)"],
                           consistency_level=self.settings.read_consistency)
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

    def _search_request(self, binding: Binding, vectors: np.ndarray, top_k: int, expr: str) -> tuple[dict[str, Any], str]:
        """The keyword arguments of one Milvus search (either client), and the grouping path."""
        native = self.capabilities.native_grouping
        limit = top_k if native else min(MILVUS_MAX_TOPK, top_k * self.settings.overfetch_factor)
        params = dict(self.settings.search_params)
        if "ef" in params:  # HNSW needs ef >= limit
            params["ef"] = max(int(params["ef"]), limit)
        if "search_list" in params:  # DiskANN needs search_list >= limit
            params["search_list"] = max(int(params["search_list"]), limit)
        kwargs: dict[str, Any] = dict(
            collection_name=binding.collection,
            data=cs.as_stored(vectors, binding.storage),
            filter=expr,
            limit=limit,
            output_fields=cs.OUTPUT_FIELDS,
            search_params={"metric_type": binding.metric, "params": params},
            anns_field=cs.VECTOR,
            consistency_level=self.settings.read_consistency,
        )
        if native:
            kwargs["group_by_field"] = "product_id"
        return kwargs, "native" if native else "overfetch"

    @staticmethod
    def _distinct_products(raw: Any, top_k: int, min_score: float | None) -> list[list[ProductHit]]:
        results: list[list[ProductHit]] = []
        for per_query in raw:
            seen: set[str] = set()
            hits: list[ProductHit] = []
            for h in sorted(per_query, key=lambda h: -float(h["distance"])):
                entity = h.get("entity", {})
                pid = str(entity.get("product_id", ""))
                score = float(h["distance"])
                if pid in seen or (min_score is not None and score < min_score):
                    continue
                seen.add(pid)
                hits.append(cs.row_to_hit(cs.hit_id(h), score, entity))
                if len(hits) == top_k:
                    break
            results.append(hits)
        return results

    def search(
        self,
        binding: Binding,
        vectors: np.ndarray,
        *,
        top_k: int,
        expr: str = "",
        min_score: float | None = None,
    ) -> tuple[list[list[ProductHit]], str]:
        """Distinct products per query vector, best image each; one Milvus round trip for all of them.

        Returns the hits and the grouping path ("native": Milvus grouped;
        "overfetch": the service fetched ``overfetch_factor * top_k`` images and
        grouped them). Results are de-duplicated by product either way, so a
        backend that ignores grouping can never return one product twice.
        """
        kwargs, grouping = self._search_request(binding, vectors, top_k, expr)
        with self._call("search") as c:
            raw = c.search(**kwargs)
        return self._distinct_products(raw, top_k, min_score), grouping

    async def search_async(
        self,
        binding: Binding,
        vectors: np.ndarray,
        *,
        top_k: int,
        expr: str = "",
        min_score: float | None = None,
    ) -> tuple[list[list[ProductHit]], str]:
        """``search`` over the asyncio client: the same request, the same grouping, no thread hop."""
        kwargs, grouping = self._search_request(binding, vectors, top_k, expr)
        async with self._acall("search") as c:
            raw = await c.search(**kwargs, timeout=self.settings.milvus_timeout_s)
        return self._distinct_products(raw, top_k, min_score), grouping

__all__ = ["Binding", "Capabilities", "CatalogStore", "literal", "native_grouping_supported"]
