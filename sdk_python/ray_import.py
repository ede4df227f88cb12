"""The catalog import on Ray Data: the same embedding, dedup and resume rules, run on a Ray cluster.

Why it is built this way:

- **The driver only steers.** It parses the catalog file (metadata, a few hundred bytes a row),
  keeps the resume ledger and draws the progress bar. Reading and hashing the images, finding
  exact duplicates, skipping what the ledger already holds, embedding and (for sinks that every
  worker can open) writing all run on the cluster's workers:

  1. ``_read_and_hash`` (Ray Data tasks): read each image, sha256 it, or record why it failed;
  2. ``groupby(key).map_groups(_first_copy)`` (a shuffle of those small rows, on the workers):
     one row per content, the catalog's first line, as the local engine keeps it;
  3. ``_EmbedWriter`` (an actor pool, one DeviceRuntime each): skip contents the ledger holds
     (a sorted array of image ids broadcast once through the object store), read the image again,
     check its hash, embed it and upsert the actor's batch through its own sink.

  Images are read twice (to hash, then to embed) so that no image bytes go through the shuffle:
  at catalog scale moving every image across the cluster costs more than reading it again.
- **Parallel, idempotent writes.** Each actor writes its batches through its own sink (the
  service's admin API, or a Milvus server); image id = content hash and writes are upserts, so a
  batch written twice (an actor retried after its node died, a rerun after a crash) overwrites
  itself. A Milvus Lite file is locked by one process, so there the vectors come back to the
  driver, which writes them (``BatchWriter``, as the local engine does).
- **Resumable from the driver.** A row comes back to the driver only after its batch was
  acknowledged; the driver then records it in the ledger (``ImportState``). A driver or a worker
  node that dies loses at most the unrecorded batches, which a rerun redoes (upserts: nothing is
  duplicated).
- **Attach or start.** ``address=None`` starts a private local Ray on loopback (``address="local"``,
  so a cluster someone else started on this machine is never joined by accident); an address
  attaches to that cluster without node options, which Ray refuses when connecting
  (``connect_ray``). An address that cannot be reached, a cluster of another Ray version or one
  that wants a token fails before the ledger or the index is touched, with one clear line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

import numpy as np

from shoplens.contract.errors import ErrorCode, ShoplensError
from shoplens.contract.sinks import CatalogSink
from shoplens.sdk.catalog import CatalogEntry
from shoplens.sdk.images import ImageError, content_hash
from shoplens.sdk.import_ledger import ImportState
from shoplens.sdk.importer import BatchWriter, ImportSummary, _check_entry, _embed, _init_worker, _Pending, _read, _to_image, image_id_for, progress_bar

log = logging.getLogger("shoplens.sdk.ray_import")

#: seconds to wait for a TCP answer from a cluster address before saying it cannot be reached
#: (Ray itself keeps retrying an unreachable GCS for minutes)
CONNECT_TIMEOUT_S = 5.0
#: rows per read/hash task: big enough to amortise a task, small enough to spread a small catalog
READ_BATCH = 32
#: rows (~200 bytes: index, catalog row, hash) per dedup shuffle partition
DEDUP_PARTITION_ROWS = 100_000
#: statuses of a row coming back to the driver
FAILED, DONE, WRITTEN, EMBEDDED = "failed", "done", "written", "embedded"

SinkFactory = Callable[[], CatalogSink]


class RayClusterError(ShoplensError):
    """The Ray cluster named by ``--ray-address`` cannot be used; nothing was read or written."""

    code = ErrorCode.BACKEND_UNAVAILABLE


#: what Ray says when a local head was slow to come up (both seen in CI on a busy 2-core machine)
_LOCAL_START_TIMEOUTS = (
    "Timed out waiting for file",  # the GCS never wrote its port file
    "timed out during startup",  # the raylet did not register with the GCS within Ray's fixed 30 s
)


def _host_port(address: str) -> tuple[str, int] | None:
    """``HOST:PORT`` or ``ray://HOST:PORT`` -> (host, port); None for ``auto``; RayClusterError otherwise."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest:
        raise RayClusterError(f"--ray-address {address!r}: expected auto, HOST:PORT (the head's GCS port, e.g. 10.0.0.5:6379) "
                              "or ray://HOST:PORT (its Ray Client port, e.g. ray://10.0.0.5:10001)", code=ErrorCode.VALIDATION_ERROR)
    return host.strip("[]"), int(port)


def _probe(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast (one TCP connect) when the address does not answer: Ray would retry for minutes."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as exc:
        raise RayClusterError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
                              f"(is `ray start --head` running there, and is the port open?)") from None


def _explain(address: str, exc: BaseException) -> RayClusterError:
    """Ray's connection failures, as one line that says what to do."""
    import ray

    chain, cause = [], exc  # Ray wraps the reason: ConnectionError from RuntimeError from AuthenticationError
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = "\n".join(str(e) for e in chain)
    mismatch = next((str(e) for e in chain if "Version mismatch" in str(e)), "")
    if mismatch:
        detail = " ".join(line.strip() for line in mismatch[mismatch.index("Version mismatch"):].splitlines() if line.strip())
        return RayClusterError(f"the Ray cluster at {address} runs another Ray or Python version than this shoplens "
                               f"(ray {ray.__version__}): {detail}. Use the cluster's Ray and Python versions here.")
    if any(isinstance(e, ray.exceptions.AuthenticationError) for e in chain) or "InvalidAuthToken" in text:
        return RayClusterError(f"the Ray cluster at {address} requires its auth token: set RAY_AUTH_MODE=token and "
                               "RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) to the cluster's token")
    if "Could not find any running Ray instance" in text:
        return RayClusterError("--ray-address auto: no running Ray cluster found on this machine (RAY_ADDRESS is not set "
                               "and no `ray start` instance is running here); give HOST:PORT or ray://HOST:PORT")
    reason = " ".join(text.split())[:600] or type(exc).__name__  # Ray's own words, on one line
    return RayClusterError(f"cannot attach to the Ray cluster at {address}: {reason}")


def connect_ray(address: str | None, workers: int) -> bool:
    """Attach to ``address`` (or start a private local Ray); True when this call initialised Ray.

    Attaching passes no node options (``num_cpus``, node address): Ray refuses them when it
    connects; the cluster's nodes bring their own resources.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray phones home otherwise
    import ray

    if ray.is_initialized():
        return False
    if not address:
        _start_local(ray, workers)
        return True
    _probe(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises bare Exceptions, ConnectionError, RuntimeError...
        ray.shutdown()
        raise _explain(address, exc) from None
    return True


def _start_local(ray: Any, workers: int) -> None:
    """A private Ray on loopback with ``workers`` CPUs, retried once when it was slow to come up.

    ``address="local"``: a new instance even when `ray start` left a cluster address on this machine.
    Why the retry: a local head forks its GCS server and raylet from this process; in CI (a
    process with many gRPC/Milvus threads, 2 busy cores) one of them has twice failed to come
    up within Ray's fixed wait (``_LOCAL_START_TIMEOUTS``). A second start in the same process worked.
    """
    for attempt in (1, 2):
        try:
            ray.init(address="local", num_cpus=workers, _node_ip_address="127.0.0.1", include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when the raylet does not register
            if attempt == 2 or not any(m in str(exc) for m in _LOCAL_START_TIMEOUTS):
                raise
            log.warning("local Ray did not start (%s); starting it once more", exc)
            ray.shutdown()


# ---- worker side -------------------------------------------------------------------------


def _row_entry(row_json: str) -> CatalogEntry:
    return CatalogEntry(**json.loads(row_json))


def _read_entry(entry: CatalogEntry, http: Any) -> bytes:
    """The importer's own checks and reader (image_url rule, size, download), on a worker."""
    _check_entry(entry)
    return _read(entry, http)


def _read_and_hash(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data task: read and hash each image; a failed one gets a key of its own (no dedup)."""
    import httpx

    keys, errors = [], []
    with httpx.Client() as http:
        for idx, row in zip(batch["idx"], batch["entry"]):
            try:
                keys.append(content_hash(_read_entry(_row_entry(str(row)), http)))
                errors.append("")
            except ImageError as exc:
                keys.append(f"failed:{int(idx)}")
                errors.append(exc.message)
    return {**batch, "key": np.asarray(keys, dtype=object), "error": np.asarray(errors, dtype=object)}


def _first_copy(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One content: keep its first catalog line (as the local engine does), count the other copies."""
    first = int(np.argmin(group["idx"]))
    n = len(group["idx"])
    return {"idx": group["idx"][[first]], "entry": group["entry"][[first]], "key": group["key"][[first]],
            "error": group["error"][[first]], "copies": np.asarray([n - 1])}


class _EmbedWriter:
    """Ray Data actor: one DeviceRuntime (and, for a shared index, one sink) reused across batches."""

    def __init__(self, embedder: str, detector: str | None, precision: str | None, min_box_fraction: float | None,
                 done_ids: list[Any], sink_factory: SinkFactory | None) -> None:
        import ray

        _init_worker(embedder, detector, precision, 1, min_box_fraction)
        self.done: np.ndarray = ray.get(done_ids[0])  # sorted S12 image ids the ledger holds (zero-copy)
        self.sink = sink_factory() if sink_factory is not None else None

    def _is_done(self, digest: str) -> bool:
        key = np.bytes_(bytes.fromhex(image_id_for(digest)))
        i = int(np.searchsorted(self.done, key))
        return i < len(self.done) and self.done[i] == key

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import httpx

        status, errors, vectors, images = [], [], [], []
        with httpx.Client() as http:
            for row, key, error in zip(batch["entry"], batch["key"], batch["error"]):
                entry = _row_entry(str(row))
                st, err, vec = self._one(entry, str(key), str(error), http)
                if st == EMBEDDED and self.sink is not None:
                    images.append(_to_image(_Pending(entry, str(key), b""), vec))
                    st = WRITTEN
                status.append(st)
                errors.append(err)
                vectors.append(b"" if vec is None or self.sink is not None else vec.astype(np.float32).tobytes())
        if images:
            self.sink.upsert(images)  # type: ignore[union-attr]  # durable before these rows reach the driver
        return {"idx": batch["idx"], "key": batch["key"], "copies": batch["copies"], "status": np.asarray(status, dtype=object),
                "error": np.asarray(errors, dtype=object), "vector": np.asarray(vectors, dtype=object)}

    def _one(self, entry: CatalogEntry, digest: str, error: str, http: Any) -> tuple[str, str, np.ndarray | None]:
        if error:
            return FAILED, error, None
        if self._is_done(digest):
            return DONE, "", None
        try:
            data = _read_entry(entry, http)
        except ImageError as exc:
            return FAILED, exc.message, None
        if content_hash(data) != digest:
            return FAILED, "the image changed while it was being imported; run the import again", None
        _, vecs, info = _embed((0, data))
        if vecs is None:
            return FAILED, info, None
        return EMBEDDED, "", vecs[0]  # the Ray engine imports one model


# ---- driver ------------------------------------------------------------------------------


def _done_ids(state: ImportState) -> np.ndarray:
    """The ledger's image ids as a sorted fixed-width array: 12 bytes an image, searched by bisection."""
    ids = np.asarray([bytes.fromhex(i) for i in state.done_image_ids()], dtype="S12")
    ids.sort()
    return ids


def _rows(entries: list[CatalogEntry]) -> list[dict[str, Any]]:
    """Rows for the workers: local image paths made absolute, since workers do not share the driver's cwd."""
    return [{"idx": i, "entry": json.dumps(asdict(e) | ({} if e.is_remote else {"image": os.path.abspath(e.image)}))} for i, e in enumerate(entries)]


def _partitions(n: int) -> int:
    """Shuffle partitions for the dedup: ``DEDUP_PARTITION_ROWS`` small rows each (Ray's default of
    ~200 partitions made the dedup of 42 rows take 144 s on a 2-CPU cluster)."""
    return max(1, -(-n // DEDUP_PARTITION_ROWS))


def _blocks(n: int, workers: int) -> int:
    """Enough blocks that every worker gets some, few enough that a task is not all overhead."""
    return max(1, min(max(1, n // READ_BATCH), workers * 4))


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
    sink_factory: SinkFactory | None = None,
    min_box_fraction: float | None = None,
    progress: bool = False,
) -> ImportSummary:
    """Embed and write every new image on Ray; see the module docstring for the guarantees.

    ``address``: an existing cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); default: a
    private local instance with ``workers`` CPUs. ``workers``: embedding actors (at most; the
    pool shrinks to what the cluster can place, down to one). ``sink_factory``: builds, on each
    worker, a sink writing where ``sink`` does (picklable, e.g. ``functools.partial``); without
    it the driver writes through ``sink`` (a Milvus Lite file admits one process).
    """
    started_here = connect_ray(address, workers)
    import ray

    summary = ImportSummary()
    state = ImportState(state_path, sink.model_id)
    t0 = time.perf_counter()
    try:
        indexed = []
        for e in entries:
            summary.total += 1
            if e.indexed:
                indexed.append(e)
            else:
                summary.not_indexed += 1
        with progress_bar(progress, summary.total, summary, t0, done=summary.not_indexed) as advance:
            writer = BatchWriter(sink, state, summary, batch_size, advance)
            if indexed:
                _run(ray, indexed, summary=summary, writer=writer, advance=advance, embedder=os.path.abspath(embedder),
                     detector=os.path.abspath(detector) if detector else None, precision=precision, min_box_fraction=min_box_fraction,
                     workers=workers, batch_size=batch_size, sink_factory=sink_factory)
            writer.flush()
        writer.finish()  # seals what this writer or the workers' sinks wrote
    finally:
        summary.seconds = time.perf_counter() - t0
        state.close()
        if started_here:
            ray.shutdown()
    return summary


def _pipeline(rows: list[dict[str, Any]], done_ids: list[Any], *, embedder: str, detector: str | None, precision: str | None,
              min_box_fraction: float | None, workers: int, batch_size: int, sink_factory: SinkFactory | None) -> Any:
    """The Ray Data pipeline of the module docstring; its output rows are small (no image bytes)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver draws one bar for the whole import
    ctx.print_on_execution_start = False
    hashed = (ray.data.from_items(rows, override_num_blocks=_blocks(len(rows), workers))
              .map_batches(_read_and_hash, batch_size=READ_BATCH, batch_format="numpy", num_cpus=0.5)
              .groupby("key", num_partitions=_partitions(len(rows))).map_groups(_first_copy, batch_format="numpy", num_cpus=0.5)
              # about one block per write batch: an actor task is a block, so this spreads the work over every
              # actor and returns each batch to the driver (ledger, progress) once its sink acknowledged it
              .repartition(max(1, -(-len(rows) // batch_size)))
              # a barrier of small rows: every task that needs a CPU is done before the embedding actors take
              # them all (a node left with 1 CPU and a repartition still to run would wait forever)
              .materialize())
    return hashed.map_batches(
        _EmbedWriter,
        fn_constructor_kwargs={"embedder": embedder, "detector": detector, "precision": precision, "min_box_fraction": min_box_fraction,
                               "done_ids": done_ids, "sink_factory": sink_factory},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),  # as many as fit, at least one: a lost node shrinks the pool
        num_cpus=1,
        batch_format="numpy",
    )


class _Coordinator:
    """Runs the pipeline inside the cluster and hands the driver one output batch per call.

    Why an actor: Ray Data does not run through Ray Client (``ray://``: "'Worker' object has no
    attribute 'core_worker'" in Ray 2.60), and on the head node it survives the loss of any
    worker node. The driver keeps what must stay with it: the ledger, the Lite writes, the bar.
    """

    def __init__(self, rows: list[dict[str, Any]], done_ids: list[Any], options: dict[str, Any]) -> None:
        self.batches = iter(_pipeline(rows, done_ids, **options).iter_batches(batch_format="numpy", batch_size=None, prefetch_batches=1))

    def next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _run(ray: Any, entries: list[CatalogEntry], *, summary: ImportSummary, writer: BatchWriter, advance: Callable[..., None],
         **options: Any) -> None:
    """Start the coordinator on the head node and record what comes back, batch by batch."""
    done_ids = [ray.put(_done_ids(writer.state))]  # in a list: handed over as a reference, fetched once per actor
    head = {"node:__internal_head__": 0.001}  # the resource only the head node has
    coordinator = ray.remote(num_cpus=0, resources=head, max_restarts=0)(_Coordinator).remote(_rows(entries), done_ids, options)
    try:
        while (batch := ray.get(coordinator.next.remote())) is not None:
            _record(batch, entries, summary, writer, advance)
    finally:
        ray.kill(coordinator)


def _record(batch: dict[str, np.ndarray], entries: list[CatalogEntry], summary: ImportSummary, writer: BatchWriter,
            advance: Callable[..., None]) -> None:
    """One output batch into the summary, the ledger and the bar (and, for a Lite file, the index)."""
    written: list[tuple[str, str, str]] = []
    for idx, digest, copies, status, error, vector in zip(batch["idx"], batch["key"], batch["copies"], batch["status"], batch["error"], batch["vector"]):
        entry, digest = entries[int(idx)], str(digest)
        summary.duplicates += int(copies)
        advance(int(copies))
        if status == FAILED:
            writer.add(_Pending(entry, digest, b""), None, str(error))
        elif status == DONE:
            summary.already_done += 1
            advance()
        elif status == EMBEDDED:  # the driver writes (a Lite file)
            writer.add(_Pending(entry, digest, b""), np.frombuffer(vector, dtype=np.float32), "")
        else:  # WRITTEN by a worker's sink: acknowledged, so record it
            written.append((digest, image_id_for(digest), entry.product_id))
    if written:
        writer.acknowledged(written, len(written))
