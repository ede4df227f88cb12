"""Whether a backend stores half-precision vectors end to end: probed once per process, refused by version where known bad."""

from __future__ import annotations

import logging
import time

import numpy as np
from pymilvus import DataType, MilvusClient

from shoplens.cloud import schema as cs
from shoplens.cloud.milvus_conn import MilvusConnection, parse_server_version

log = logging.getLogger("shoplens.cloud.store")

#: FLOAT16_VECTOR is trusted from this server version on
F16_MIN_SERVER = (2, 4, 0)


class StorageProbe:
    """``storage_problem(storage)`` for the connection's backend, cached per process."""

    def __init__(self, conn: MilvusConnection, name_prefix: str) -> None:
        self.conn = conn
        self.name_prefix = name_prefix
        self._checked: dict[str, str | None] = {}  # storage -> None (works) or why not

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
        if storage in self._checked:
            return self._checked[storage]
        field_type, dtype = cs.STORAGE_TYPES[storage]
        caps = self.conn.capabilities
        parsed = parse_server_version(caps.server_version)
        if caps.backend == "server" and (parsed is None or parsed < F16_MIN_SERVER):
            problem = (f"{field_type.name} needs a Milvus server >= {'.'.join(map(str, F16_MIN_SERVER))} "
                       f"(this is {caps.server_version}: measured on 2.3.5, rows are stored but searches return "
                       "wrong neighbours intermittently)")
            log.warning("vector storage %s unavailable, new collections store f32: %s", storage, problem)
            self._checked[storage] = problem
            return problem
        name = f"{self.name_prefix}__probe_{storage}_{time.time_ns()}"
        problem = None
        with self.conn._call("probe_storage") as c:
            try:
                schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field("id", DataType.INT64, is_primary=True)
                schema.add_field(cs.VECTOR, field_type, dim=16)
                index = cs.build_index_params(c, lite=self.conn.lite, index_type=self.conn.settings.index_type,
                                              params=self.conn.settings.index_params)
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
                    problem = (f"{field_type.name} stores but searches wrongly on {self.conn.capabilities.backend} "
                               f"{self.conn.capabilities.server_version} (self-search gave {got}, expected [(3, 1.0), (11, 1.0)])")
            except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
                problem = f"{field_type.name} not usable on {self.conn.capabilities.backend} {self.conn.capabilities.server_version}: " + \
                    (str(getattr(exc, "message", "") or exc).splitlines() or [type(exc).__name__])[0][:200]
            finally:
                try:
                    if c.has_collection(name):
                        c.drop_collection(name)
                except Exception:  # noqa: BLE001 - a leftover probe collection is harmless
                    log.warning("could not drop probe collection %s", name)
        if problem:
            log.warning("vector storage %s unavailable, new collections store f32: %s", storage, problem)
        self._checked[storage] = problem
        return problem
