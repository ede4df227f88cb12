"""The catalog import on Ray Data: the same embedding and resume rules, spread over a Ray cluster.

The driver reads, hashes and filters images against the resume ledger exactly
as the local engine does (``importer._pending``), then hands chunks of new
images to ``map_batches`` actors that each hold the LiteRT interpreters, and
writes the returned vectors through the same sink. At tens of millions of
images, shard the catalog file and run one driver per shard (each with its own
``--state``): the embedding, which is where the time goes, scales with the
cluster; writes are batched upserts that Milvus absorbs in parallel.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from shoplens.sdk.catalog import CatalogEntry
from shoplens.sdk.importer import BatchWriter, CatalogSink, ImportState, ImportSummary, _batched, _pending

CHUNK = 4096  # images per Ray dataset: bounds driver memory, keeps every actor busy

log = logging.getLogger("shoplens.sdk.ray_import")


class _EmbedActor:
    """Ray Data callable class: one DeviceRuntime per actor, reused across batches."""

    def __init__(self, embedder: str, detector: str | None, precision: str | None) -> None:
        from shoplens.sdk.importer import _init_worker

        _init_worker(embedder, detector, precision, 1)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from shoplens.sdk.importer import _embed

        idx, vecs, infos = [], [], []
        for i, data in zip(batch["idx"], batch["data"]):
            _, vectors, info = _embed((int(i), bytes(data)))
            vec = None if vectors is None else vectors[0]  # the Ray engine imports one model
            idx.append(int(i))
            vecs.append(np.zeros(0, np.float32) if vec is None else vec.astype(np.float32))
            infos.append(info if vec is None else "")
        return {"idx": np.asarray(idx), "vector": np.asarray(vecs, dtype=object), "error": np.asarray(infos, dtype=object)}


#: what Ray says when a local head was slow to come up (both seen in CI on a busy 2-core machine)
_LOCAL_START_TIMEOUTS = (
    "Timed out waiting for file",  # the GCS never wrote its port file
    "timed out during startup",  # the raylet did not register with the GCS within Ray's fixed 30 s
)


def _init_ray(ray: Any, address: str | None, workers: int) -> None:
    """Connect to ``address`` or start a local instance on loopback, retrying a local start once.

    Why the retry: a local head forks its GCS server and raylet from this process; in CI (a
    process with many gRPC/Milvus threads, 2 busy cores) one of them has twice failed to come
    up within Ray's fixed wait (``_LOCAL_START_TIMEOUTS``). A second start in the same process worked.
    """
    local = {} if address else {"num_cpus": workers, "_node_ip_address": "127.0.0.1"}  # a local instance stays on loopback
    for attempt in (1, 2):
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **local)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when the raylet does not register
            if address or attempt == 2 or not any(m in str(exc) for m in _LOCAL_START_TIMEOUTS):
                raise
            log.warning("local Ray did not start (%s); starting it once more", exc)
            ray.shutdown()


def import_catalog_ray(
    entries: Iterable[CatalogEntry],
    *,
    embedder: str | os.PathLike[str],
    detector: str | os.PathLike[str] | None,
    sink: CatalogSink,
    state_path: str | os.PathLike[str],
    workers: int = 2,
    batch_size: int = 64,
    precision: str | None = None,
    address: str | None = None,
) -> ImportSummary:
    """``address``: an existing Ray cluster (``ray://...`` or ``auto``); default: a local instance."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray phones home otherwise
    import ray
    import ray.data

    started_here = not ray.is_initialized()
    if started_here:
        _init_ray(ray, address, workers)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    summary = ImportSummary()
    state = ImportState(state_path, sink.model_id)
    t0 = time.perf_counter()
    writer = BatchWriter(sink, state, summary, batch_size)
    try:
        for chunk in _batched(_pending(entries, state, summary, lambda: None), CHUNK):
            ds = ray.data.from_items([{"idx": i, "data": p.data} for i, p in enumerate(chunk)], override_num_blocks=max(1, min(len(chunk), workers * 4)))  # blocks for every actor
            out = ds.map_batches(
                _EmbedActor,
                fn_constructor_kwargs={"embedder": str(embedder), "detector": str(detector) if detector else None, "precision": precision},
                batch_size=batch_size,
                concurrency=workers,
                batch_format="numpy",
            )
            for row in out.iter_rows():
                p = chunk[int(row["idx"])]
                vec = None if row["error"] else np.asarray(row["vector"], dtype=np.float32)
                writer.add(p, vec, str(row["error"]))
        writer.finish()
    finally:
        summary.seconds = time.perf_counter() - t0
        state.close()
        if started_here:
            ray.shutdown()
    return summary
