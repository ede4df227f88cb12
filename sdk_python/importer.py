"""Catalog import: embed every catalog image with the phone's own bundle and write it to the index.

Why it is built this way:
- **Same arithmetic as the phone**: the main object is found and cropped by
  the same DeviceRuntime, so catalog and query vectors come from one model.
- **Resumable**: a SQLite state file records, per image *content hash* and
  model id, what the index has acknowledged. A rerun after a crash skips those,
  and because the image id is derived from the content hash and writes are
  upserts, redoing an unacknowledged batch overwrites instead of duplicating.
- **Never aborts for one file**: unreadable, corrupt or missing images are
  recorded with a reason and summarised at the end; exact duplicates (same
  bytes) are indexed once.
- **Catalog images only**: rows whose ``role`` is a labelled shopper photo
  (``photo``/``val``, read by the embedder trainer) are counted in
  ``ImportSummary.not_indexed`` and never embedded, in both engines (both
  ask ``CatalogEntry.indexed``), so one catalog file serves the index and the trainer.
- **Parallel**: ``workers`` processes each hold their own LiteRT interpreters.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from shoplens.contract.codecs import Encoding, encode_vector
from shoplens.contract.schemas import MAX_UPSERT_IMAGES, CatalogImage
from shoplens.contract.sinks import CatalogSink
from shoplens.contract.urls import ImageUrlError, check_image_url
from shoplens.sdk.catalog import CatalogEntry
from shoplens.sdk.images import ImageError, content_hash, read_bytes
from shoplens.sdk.import_ledger import ImportState, ImportStates

if TYPE_CHECKING:  # the runtime loads LiteRT: imported only where an import runs
    from shoplens.sdk.runtime import FlowOptions

IMAGE_ID_HEX = 24  # 96 bits of the content hash: collision-free at any catalog size


def image_id_for(digest: str) -> str:
    return digest[:IMAGE_ID_HEX]


class ApiSink:
    """Writes through the service's admin API (needs an admin key)."""

    def __init__(self, client: Any, model_id: str) -> None:
        self.client = client
        self.model_id = model_id

    def upsert(self, images: list[CatalogImage]) -> None:
        for i in range(0, len(images), MAX_UPSERT_IMAGES):
            self.client.upsert_images(self.model_id, images[i : i + MAX_UPSERT_IMAGES])

    def finish(self) -> None:
        self.client.flush()


class JsonlSink:
    """Appends embedded rows to a JSONL file (one contract CatalogImage per line), fsynced per batch.

    Used to prepare a re-index (``shoplens reindex --catalog``): rows are embedded once, then
    loaded into a staging collection and swapped in. Re-running appends rows again for images
    the ledger did not record; loading is an upsert by image id, so that duplicates nothing.
    """

    def __init__(self, path: str | os.PathLike[str], model_id: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.model_id = model_id

    def upsert(self, images: list[CatalogImage]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(img.model_dump_json() + "\n" for img in images))
            f.flush()
            os.fsync(f.fileno())


@dataclass
class ImportSummary:
    total: int = 0
    imported: int = 0
    already_done: int = 0
    duplicates: int = 0
    not_indexed: int = 0  # labelled shopper photos (role photo/val): training data, never indexed
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    seconds: float = 0.0
    per_model: dict[str, int] = field(default_factory=dict)  # model id -> images written to it

    @property
    def images_per_s(self) -> float:
        return self.imported / self.seconds if self.seconds > 0 else 0.0


# ---- worker side ------------------------------------------------------------------

_RUNTIMES: list[Any] = []


def import_options(min_box_fraction: float | None = None) -> FlowOptions:
    """How the import picks what to embed in a catalog image: the detector manifest's rule, one box
    (the top one), no extra whole-image vector; the whole image when no box is kept. One vector per
    image. (benchmarks/detector_flow.py --catalog-crops measures it against embedding images whole.)"""
    from shoplens.sdk.runtime import FlowOptions

    return FlowOptions(max_objects=1, search_whole_photo=False, min_box_fraction=min_box_fraction)


def _init_worker(embedder: str | list[str], detector: str | None, precision: str | None, threads: int, min_box_fraction: float | None = None) -> None:
    """One DeviceRuntime per embedder; only the first detects (the others embed the same crop).

    The detector manifest's object-choice rule picks the main object (min box, ignored labels,
    margin), the phone's rule; one vector per image, so one box and no extra whole-photo vector.
    """
    global _RUNTIMES
    from shoplens.sdk.runtime import DeviceRuntime

    options = import_options(min_box_fraction)
    embedders = [embedder] if isinstance(embedder, str) else list(embedder)
    _RUNTIMES = [DeviceRuntime.from_bundle(embedder=e, detector=detector if k == 0 else None, precision=precision,
                                           num_threads=threads, options=options) for k, e in enumerate(embedders)]


def _embed_all(data: bytes) -> tuple[list[np.ndarray], str]:
    """Main object of one image -> one unit vector per embedder (decoded and detected once)."""
    from shoplens.sdk.images import decode_rgb

    rgb = decode_rgb(data)
    first = _RUNTIMES[0].process(rgb).objects[0]
    x1, y1, x2, y2 = first.box
    box = (x1, y1, x2 - x1, y2 - y1) if first.source != "whole_image" else None
    return [first.vector] + [rt.process(rgb, box=box).objects[0].vector for rt in _RUNTIMES[1:]], first.source


def _embed(task: tuple[int, bytes]) -> tuple[int, list[np.ndarray] | None, str]:
    """Main object of one image -> its vectors (one per embedder), or the reason it failed."""
    idx, data = task
    try:
        vectors, source = _embed_all(data)
        return idx, vectors, source
    except ImageError as exc:
        return idx, None, exc.message
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop the import
        return idx, None, f"{type(exc).__name__}: {exc}"


# ---- driver -----------------------------------------------------------------------


@dataclass
class _Pending:
    entry: CatalogEntry
    digest: str
    data: bytes


def _check_entry(entry: CatalogEntry) -> None:
    """Entries built in code skip the catalog reader's image_url check; refuse a bad one here, as
    a per-image failure, so it neither aborts the run half-way nor reaches the index."""
    try:
        check_image_url(entry.image_url)
    except ImageUrlError as exc:
        raise ImageError(str(exc)) from None


def _read(entry: CatalogEntry, http: Any) -> bytes:
    if entry.is_remote:
        try:
            r = http.get(entry.image, timeout=30, follow_redirects=True)
            r.raise_for_status()
        except Exception as exc:  # noqa: BLE001 - reported per image
            raise ImageError(f"download failed: {type(exc).__name__}: {exc}") from None
        return read_bytes(r.content)
    return read_bytes(entry.image)


def _pending(entries: Iterable[CatalogEntry], state: ImportState | ImportStates, summary: ImportSummary, on_skip: Callable[[], None]) -> Iterator[_Pending]:
    import httpx

    seen: set[str] = set()
    with httpx.Client() as http:
        for e in entries:
            summary.total += 1
            if not e.indexed:
                summary.not_indexed += 1
                on_skip()
                continue
            try:
                _check_entry(e)
                data = _read(e, http)
            except ImageError as exc:
                summary.failed.append((e.image, exc.message))
                state.mark_failed(e.image, exc.message)
                on_skip()
                continue
            digest = content_hash(data)
            if digest in seen:
                summary.duplicates += 1
                on_skip()
                continue
            seen.add(digest)
            if state.is_done(digest):
                summary.already_done += 1
                on_skip()
                continue
            yield _Pending(e, digest, data)


def _batched(it: Iterable[_Pending], n: int) -> Iterator[list[_Pending]]:
    batch: list[_Pending] = []
    for p in it:
        batch.append(p)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _to_image(p: _Pending, vector: np.ndarray) -> CatalogImage:
    e = p.entry
    return CatalogImage(
        image_id=image_id_for(p.digest),
        product_id=e.product_id,
        vector=encode_vector(vector, Encoding.F32),
        encoding=Encoding.F32,
        title=e.title[:512],
        category=e.category,
        price=e.price,
        currency=e.currency,
        image_url=e.image_url,  # the catalog's public URL or nothing: never the local path we read
        attributes={k: v for k, v in e.attributes.items() if isinstance(v, (str, int, float, bool))},
    )


class BatchWriter:
    """Collects embedded images into batches; a batch is recorded as done only after the sink
    acknowledged it. Shared by the local and the Ray engines."""

    def __init__(self, sink: CatalogSink, state: ImportState | ImportStates, summary: ImportSummary, batch_size: int,
                 advance: Callable[..., None] = lambda n=1: None) -> None:
        self.sink, self.state, self.summary, self.batch_size, self.advance = sink, state, summary, batch_size, advance
        self.images: list[CatalogImage] = []
        self.done: list[tuple[str, str, str]] = []
        self.written = 0
        self.counted = 0

    def add(self, p: _Pending, vec: np.ndarray | None, info: str, *, counts: bool = True) -> None:
        """Queue ``p``'s vector; ``counts``: it is an imported image in the summary (in a multi-model
        import, an image counts once, with the first model that lacked it)."""
        if vec is None:
            self.summary.failed.append((p.entry.image, info))
            self.state.mark_failed(p.entry.image, info)
            self.advance()
            return
        if self.state.is_done(p.digest):  # another model of a multi-model import lacked it, not this one
            return
        self.images.append(_to_image(p, vec))
        self.done.append((p.digest, image_id_for(p.digest), p.entry.product_id))
        self.counted += counts
        if len(self.images) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.images:
            self.sink.upsert(self.images)  # durable before we record it as done
            self.acknowledged(self.done, self.counted)
            self.images, self.done, self.counted = [], [], 0

    def acknowledged(self, done: list[tuple[str, str, str]], counted: int) -> None:
        """Record rows a sink acknowledged: this writer's, or (Ray engine) a worker's own sink's."""
        self.state.mark_done(done)
        self.written += len(done)
        self.summary.per_model[self.sink.model_id] = self.summary.per_model.get(self.sink.model_id, 0) + len(done)
        self.summary.imported += counted
        self.advance(counted)

    def finish(self) -> None:
        """After the last batch: let the sink seal what was written (e.g. a Milvus flush)."""
        self.flush()
        if self.written and hasattr(self.sink, "finish"):
            self.sink.finish()


class ModelWriters:
    """One BatchWriter per model of a multi-model import; an image's vectors go to the models that lack it."""

    def __init__(self, writers: list[BatchWriter]) -> None:
        self.writers = writers

    def add(self, p: _Pending, vectors: list[np.ndarray] | None, info: str) -> None:
        if vectors is None:  # one failure for the image, in every model's ledger
            first = self.writers[0]
            first.summary.failed.append((p.entry.image, info))
            for w in self.writers:
                w.state.mark_failed(p.entry.image, info)
            first.advance()
            return
        needs = [not w.state.is_done(p.digest) for w in self.writers]
        first = needs.index(True) if any(needs) else -1
        for k, (writer, vec) in enumerate(zip(self.writers, vectors)):
            writer.add(p, vec, info, counts=k == first)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def finish(self) -> None:
        for w in self.writers:
            w.finish()


def _embedded(pending: Iterable[_Pending], pool: Any, workers: int) -> Iterator[tuple[_Pending, list[np.ndarray] | None, str]]:
    """Embed pending images in order. With a pool, reading/hashing (the feeder thread) overlaps
    embedding (the workers), and a semaphore bounds how many images are held in memory."""
    if pool is None:
        for p in pending:
            _, vec, info = _embed((0, p.data))
            yield p, vec, info
        return
    slots = threading.BoundedSemaphore(workers * 16)
    inflight: dict[int, _Pending] = {}

    def feed() -> Iterator[tuple[int, bytes]]:
        for i, p in enumerate(pending):
            slots.acquire()
            inflight[i] = p
            yield i, p.data

    for idx, vec, info in pool.imap(_embed, feed(), chunksize=4):
        p = inflight.pop(idx)
        slots.release()
        yield p, vec, info


@contextmanager
def progress_bar(enabled: bool, total: int | None, summary: ImportSummary, t0: float, done: int = 0) -> Iterator[Callable[..., None]]:
    """The import's progress bar, on stderr (stdout stays for results); yields ``advance(n)``.
    Shared by both engines: the Ray engine's driver draws it from the rows its workers return."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                   TimeRemainingColumn(), disable=not enabled, console=Console(stderr=True))
    with bar:
        task = bar.add_task("index", total=total, completed=done, rate="")

        def advance(n: int = 1) -> None:
            elapsed = time.perf_counter() - t0
            bar.update(task, advance=n, rate=f"{summary.imported / elapsed:.1f} img/s" if elapsed > 0 else "")

        yield advance


def import_catalog(
    entries: Iterable[CatalogEntry],
    *,
    embedder: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    detector: str | os.PathLike[str] | None,
    sink: CatalogSink | Sequence[CatalogSink],
    state_path: str | os.PathLike[str],
    workers: int = 1,
    batch_size: int = 32,
    precision: str | None = None,
    progress: bool = True,
    total: int | None = None,
    threads: int | None = None,
    min_box_fraction: float | None = None,
) -> ImportSummary:
    """Embed and write every new image; see the module docstring for the guarantees.

    ``embedder`` and ``sink`` may be lists of the same length (one sink per model, e.g. during a
    rollout, when every served model needs the catalog): each image is read, decoded and
    detected once, embedded by every model, and written to each model that lacks it; the ledger
    is per model, so a resumed run redoes only what some model is missing.
    ``threads``: LiteRT threads per worker (default: 2 for one worker, 1 each for several).
    ``min_box_fraction``: a detection smaller than this share of the image is not the main
    object; the whole image is embedded instead. ``None``: the detector manifest's rule
    (``object_choice``), the one the phone uses.
    """
    embedders = [str(embedder)] if isinstance(embedder, (str, os.PathLike)) else [str(e) for e in embedder]
    sinks = list(sink) if isinstance(sink, Sequence) else [sink]
    if len(embedders) != len(sinks) or not sinks:
        raise ValueError(f"one sink per embedder: {len(embedders)} embedders, {len(sinks)} sinks")
    summary = ImportSummary()
    ledgers = [ImportState(state_path, s.model_id) for s in sinks]
    state = ImportStates(ledgers)
    threads = threads or (1 if workers > 1 else 2)
    init_args = (embedders, str(detector) if detector else None, precision, threads, min_box_fraction)
    pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=init_args) if workers > 1 else None
    if pool is None:
        _init_worker(*init_args)
    t0 = time.perf_counter()
    failed = True
    try:
        with progress_bar(progress, total, summary, t0) as advance:
            writer = ModelWriters([BatchWriter(s, ledger, summary, batch_size, advance) for s, ledger in zip(sinks, ledgers)])
            for p, vectors, info in _embedded(_pending(entries, state, summary, advance), pool, workers):
                writer.add(p, vectors, info)
            writer.flush()
        writer.finish()
        failed = False
    finally:
        if pool is not None:
            if failed:
                pool.terminate()  # the feeder may be blocked on a slot: don't wait for it
            else:
                pool.close()
            pool.join()
        summary.seconds = time.perf_counter() - t0
        state.close()
    return summary
