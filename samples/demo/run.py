"""The demo run: search-by-image on real shop photos, end to end, on this machine.

What it does, in the order a real deployment would:
1. finds the Grocery Store photos (../shared, SHOPLENS_DATA_DIR, or a clear error);
2. loads the shipped bundles from ``mobile_assets/`` (detector + embedder);
3. starts the search service on 127.0.0.1 over a Milvus Lite file in the cache;
4. indexes the catalog (each product's iconic image + its train photos) through
   the admin API with the catalog importer (resumable: a second run re-indexes
   nothing);
5. runs the phone's flow on the val photos (detect -> crop -> embed -> i8 ->
   ``/v1/search/batch``) with the detector manifest's object-choice rule, as an app
   would (no demo-only settings), and scores the photo's answer (every searched
   object's results merged per product) at product-level recall@1/@5;
6. prints a summary and writes ``demo_report.html``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from shoplens.contract.model_id import is_valid_model_id
from shoplens.demo.grocery import DemoData, catalog_entries, load_grocery, reference_embedder
from shoplens.demo.service import BackgroundService, wait_until_indexed
from shoplens.resources import fetch_grocery_store, grocery_store

if TYPE_CHECKING:  # the device extra is imported only when the demo runs
    from shoplens.sdk.report import LocalThumbnails, ThumbnailLookup

console = Console()


@dataclass
class QueryOutcome:
    photo: Path
    expected: str
    ranked: list[dict[str, Any]]  # the photo's answer: every object's hits merged per product
    objects: list[dict[str, Any]]  # each searched object: label, score, box, source, hits
    timings_ms: dict[str, float]
    payload_bytes: int
    jpeg_bytes: int


@dataclass
class DemoSummary:
    queries: int
    recall_at_1: float
    recall_at_5: float
    catalog_images: int
    products: int
    index_seconds: float
    query_seconds: float
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    bytes_per_query: float = 0.0
    jpeg_bytes_per_query: float = 0.0
    model_id: str = ""
    detector: str = ""
    report: str = ""
    detector_crops: int = 0  # queries that searched at least one detected box
    objects_per_query: float = 0.0  # vectors searched per photo (boxes, and the whole photo when the rule says so)


def _latency(outcomes: list[QueryOutcome]) -> dict[str, dict[str, float]]:
    stages: dict[str, list[float]] = {}
    for o in outcomes:
        for k, v in o.timings_ms.items():
            stages.setdefault(k, []).append(v)
    out = {}
    for k, vals in stages.items():
        vals = sorted(vals)
        out[k] = {"p50": statistics.median(vals), "p90": vals[min(len(vals) - 1, int(0.9 * len(vals)))]}
    return out


def demo_files(workdir: Path, model_id: str, tag: str = "", fresh: bool = False) -> tuple[Path, Path]:
    """The demo's Lite catalog file and import ledger for this model id (and subset tag).

    Why keyed by the model id: a catalog is bound to the embedder that filled it (the
    service answers 409 to other vectors), so an upgraded bundle must start a new
    index, not meet the old one. Files of other model ids are caches of bundles no
    longer shipped and are removed, as are both files when ``fresh``.
    """
    db = workdir / f"catalog-{model_id}{tag}.db"
    state = workdir / f"import-{model_id}{tag}.db"
    stale = [workdir / f"catalog{tag}.db"]  # before the name carried the model id
    for kind in ("catalog", "import"):
        for f in workdir.glob(f"{kind}-*{tag}.db"):
            other = f.name.removeprefix(f"{kind}-").removesuffix(f"{tag}.db")
            if other != model_id and is_valid_model_id(other):
                stale.append(f)
    if fresh or not db.exists():
        stale += [db, state]
    for f in stale:  # a Milvus Lite 3 "file" is a directory
        if f.is_dir():
            shutil.rmtree(f)
        elif f.exists():
            f.unlink()
    return db, state


def run_demo(
    *,
    bundle_dir: Path,
    workdir: Path,
    report_path: Path,
    max_queries: int | None = None,
    products: int | None = None,
    workers: int = 2,
    catalog_detect: bool = False,
    report_cards: int = 40,
    fresh: bool = False,
    progress: bool = True,
) -> DemoSummary:
    from rich.progress import Progress

    from shoplens.contract.manifest import load_manifest
    from shoplens.sdk.client import ShoplensClient
    from shoplens.sdk.importer import ApiSink, import_catalog
    from shoplens.sdk.report import object_label
    from shoplens.sdk.runtime import DeviceRuntime, fuse_hits, resolve_bundles
    from shoplens.settings import Settings

    look = grocery_store()
    data = load_grocery(look.path or fetch_grocery_store(), products)
    embedder, detector = resolve_bundles(bundle_dir, embedder_required=False)
    embedder = embedder or reference_embedder(workdir)
    model_id = load_manifest(embedder).embedder.model_id  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    rule = load_manifest(detector).detector.object_choice if detector else None  # type: ignore[union-attr]
    tag = (f"-{products}p" if products else "") + (f"-det{rule.min_box_fraction:g}" if catalog_detect and rule else "")
    db, state = demo_files(workdir, model_id, tag, fresh)
    admin, device = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    settings = Settings(milvus_uri=str(db), collection="demo_catalog", admin_keys=[admin], device_keys=[device], rate_limit_per_s=1e6, rate_limit_burst=1_000_000)
    entries = catalog_entries(data)
    queries = data.val[:max_queries] if max_queries else data.val
    console.print(f"[bold]catalog[/]: {len(data.products)} products, {len(entries)} images (iconic + train photos); [bold]queries[/]: {len(queries)} val photos")
    console.print(f"[bold]bundles[/]: embedder {embedder.name} ({model_id}), detector {detector.name if detector else 'none'}")
    with BackgroundService(settings) as svc:
        console.print(f"[bold]service[/]: {svc.url} (Milvus Lite at {db})")
        with ShoplensClient(svc.url, admin) as admin_client:
            t0 = time.perf_counter()
            summary = import_catalog(entries, embedder=embedder, detector=detector if catalog_detect else None, sink=ApiSink(admin_client, model_id), state_path=state, workers=workers, batch_size=64, progress=progress, total=len(entries))
            index_s = time.perf_counter() - t0
            rows = admin_client.stats().rows
        if summary.failed:
            console.print(f"[yellow]{len(summary.failed)} catalog images skipped[/]: {summary.failed[:3]}")
        with ShoplensClient(svc.url, device) as probe:
            settle_s = wait_until_indexed(probe, model_id, load_manifest(embedder).embedder.dim)  # type: ignore[union-attr]
        console.print(f"indexed {summary.imported} new images ({summary.already_done} already indexed) in {index_s:.1f} s; the index holds {rows}; search settled after {settle_s:.1f} s")
        rt = DeviceRuntime.from_bundle(embedder=embedder, detector=detector)  # the detector manifest's object-choice rule
        if detector:
            console.print(f"[bold]object choice[/] (from {detector.name}/manifest.json): {rt.choice.model_dump()}")
        outcomes: list[QueryOutcome] = []
        t0 = time.perf_counter()
        with ShoplensClient(svc.url, device) as client, Progress(disable=not progress) as bar:
            task = bar.add_task("searching val photos", total=len(queries))
            for photo, expected in queries:
                result, response = rt.search(photo, client, top_k=5)
                ranked = [h.model_dump() for h in fuse_hits((r.hits for r in response.results), 5)]
                objects = [{"label": object_label(o.label, o.source), "score": o.score, "box": o.box, "source": o.source, "hits": [h.model_dump() for h in r.hits]}
                           for o, r in zip(result.objects, response.results)]
                outcomes.append(QueryOutcome(photo, expected, ranked, objects, result.timings_ms, result.payload_bytes, photo.stat().st_size))
                bar.advance(task)
        query_s = time.perf_counter() - t0
    r1 = sum(bool(o.ranked) and o.ranked[0]["product_id"] == o.expected for o in outcomes) / len(outcomes)
    r5 = sum(o.expected in [h["product_id"] for h in o.ranked] for o in outcomes) / len(outcomes)
    demo = DemoSummary(
        queries=len(outcomes),
        recall_at_1=r1,
        recall_at_5=r5,
        catalog_images=rows,
        products=len(data.products),
        index_seconds=index_s,
        query_seconds=query_s,
        latency_ms=_latency(outcomes),
        bytes_per_query=statistics.mean(o.payload_bytes for o in outcomes),
        objects_per_query=statistics.mean(len(o.objects) for o in outcomes),
        jpeg_bytes_per_query=statistics.mean(o.jpeg_bytes for o in outcomes),
        model_id=model_id,
        detector=detector.name if detector else "",
        report=str(report_path),
        detector_crops=sum(any(obj["source"] == "detector" for obj in o.objects) for o in outcomes),
    )
    write_report(report_path, demo, outcomes[:report_cards], demo_thumbnails(data))
    (workdir / "last_summary.json").write_text(json.dumps(demo.__dict__, indent=2, default=str))
    return demo


def demo_thumbnails(data: DemoData) -> LocalThumbnails:
    """The report's thumbnail lookup: product id -> its iconic image, read from the dataset on this
    machine. The demo indexed that catalog itself, so it knows the files; the index holds no
    local paths (image_url is for public URLs only), and a hit's strings are never read as paths."""
    from shoplens.sdk.report import LocalThumbnails

    return LocalThumbnails({p.product_id: p.iconic for p in data.products})


def write_report(path: Path, demo: DemoSummary, outcomes: list[QueryOutcome], thumbnail: ThumbnailLookup) -> None:
    import html as h

    from shoplens.sdk.images import load_rgb
    from shoplens.sdk.report import ReportCard, annotate, render_html

    cards = []
    for o in outcomes:
        pic = annotate(load_rgb(o.photo), [obj["box"] for obj in o.objects], [obj["label"] for obj in o.objects])
        best = o.ranked if len(o.objects) > 1 else None
        cards.append(ReportCard(f"{o.photo.name}: expected {o.expected}", pic, o.objects, best, o.expected))
    summary = (
        f"<p>{demo.queries} shop photos searched against {demo.catalog_images} catalog images of {demo.products} products. "
        f"<b>recall@1 {demo.recall_at_1:.3f}</b>, recall@5 {demo.recall_at_5:.3f}. Model {h.escape(demo.model_id)}. "
        f"Uploaded per query: {demo.bytes_per_query:.0f} bytes of vectors ({demo.objects_per_query:.1f} per photo, one request; the photos average {demo.jpeg_bytes_per_query:.0f} bytes and never leave the device). "
        f"Correct products are marked green. Showing the first {len(cards)} queries.</p>"
    )
    path.write_text(render_html(cards, "shoplens demo: Grocery Store val photos", summary, thumbnail=thumbnail))
