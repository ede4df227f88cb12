"""``shoplens demo``: search-by-image on real shop photos, end to end, on this machine.

What it does, in the order a real deployment would:
1. finds the Grocery Store photos (../shared, SHOPLENS_DATA_DIR, or a clear error);
2. loads the shipped bundles from ``mobile_assets/`` (detector + embedder);
3. starts the search service on 127.0.0.1 over a Milvus Lite file in the cache;
4. indexes the catalog (each product's iconic image + its train photos) through
   the admin API with the catalog importer (resumable: a second run re-indexes
   nothing);
5. runs the phone's flow on the val photos (detect -> crop -> embed -> i8 ->
   ``/v1/search/batch``) and scores product-level recall@1/@5;
6. prints a summary and writes ``demo_report.html``.
"""

from __future__ import annotations

import csv
import json
import secrets
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from shoplens.contract.model_id import is_valid_model_id
from shoplens.resources import fetch_grocery_store, grocery_store

console = Console()


@dataclass
class DemoProduct:
    product_id: str
    category: str
    iconic: Path


@dataclass
class DemoData:
    root: Path
    products: list[DemoProduct]
    train: list[tuple[Path, str]]
    val: list[tuple[Path, str]]


def load_grocery(dataset_root: Path, products: int | None = None) -> DemoData:
    """Products from classes.csv; photos from train.txt / val.txt (``path, fine_id, coarse_id``).

    ``products``: keep only the first N products (and their photos), for a quick look.
    """
    root = dataset_root / "dataset" if (dataset_root / "dataset").is_dir() else dataset_root
    rows = list(csv.DictReader((root / "classes.csv").open(encoding="utf-8")))[:products]
    names = {int(r["Class ID (int)"]): r["Class Name (str)"] for r in rows}
    items = [DemoProduct(r["Class Name (str)"], r["Coarse Class Name (str)"], root / r["Iconic Image Path (str)"].lstrip("/")) for r in rows]

    def split(name: str) -> list[tuple[Path, str]]:
        out = []
        for line in (root / name).read_text().splitlines():
            if line.strip():
                path, fine, _ = (x.strip() for x in line.split(","))
                if int(fine) in names:
                    out.append((root / path, names[int(fine)]))
        return out

    return DemoData(root, items, split("train.txt"), split("val.txt"))


def catalog_entries(data: DemoData) -> list[Any]:
    from shoplens.sdk.catalog import CatalogEntry

    category = {p.product_id: p.category for p in data.products}
    entries = [CatalogEntry(p.product_id, str(p.iconic), title=p.product_id, category=p.category, attributes={"kind": "iconic"}) for p in data.products]
    entries += [CatalogEntry(pid, str(path), title=pid, category=category[pid], attributes={"kind": "shelf_photo"}) for path, pid in data.train]
    return entries


class BackgroundService:
    """The FastAPI app under uvicorn in a thread of this process, on 127.0.0.1."""

    def __init__(self, settings: Any) -> None:
        import socket

        import uvicorn

        from shoplens.cloud.app import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "BackgroundService":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the search service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@dataclass
class QueryOutcome:
    photo: Path
    expected: str
    ranked: list[dict[str, Any]]
    box: tuple[float, float, float, float] | None
    label: str
    score: float
    source: str
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
    detector_crops: int = 0  # queries whose embedded region came from a detection


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


def _reference_embedder(workdir: Path) -> Path:
    """No shipped embedder bundle: fall back to the off-the-shelf ImageNet MobileNetV1 (a real, weaker model)."""
    from shoplens.resources import find_weights
    from shoplens.sdk.wrap import wrap_tflite_embedder

    name = "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
    model = find_weights(name).require(hint="No embedder bundle in the bundle folder and no reference model: run `shoplens convert embedder` first.")
    out = workdir / "reference-embedder"
    if not (out / "manifest.json").is_file():
        wrap_tflite_embedder(model, out, name="mobilenet-v1-imagenet", link=True)
    console.print("[yellow]no embedder bundle found: using the ImageNet MobileNetV1 reference embedder instead[/]")
    return out


def _wait_until_indexed(client: Any, model_id: str, dim: int, fast_ms: float = 40.0, timeout_s: float = 120.0) -> float:
    """Milvus Lite indexes freshly written rows in the background (seconds); until then a query
    costs hundreds of ms. Measuring the demo's latency before that would measure the wrong thing."""
    import numpy as np

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    streak = 0
    while time.perf_counter() - t0 < timeout_s:
        took = client.search(rng.standard_normal(dim), model_id=model_id, top_k=5).took_ms
        streak = streak + 1 if took < fast_ms else 0
        if streak >= 3:
            break
        time.sleep(0.2)
    return time.perf_counter() - t0


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
    min_box: float = 0.3,
    catalog_detect: bool = False,
    report_cards: int = 40,
    fresh: bool = False,
    progress: bool = True,
) -> DemoSummary:
    from rich.progress import Progress

    from shoplens.contract.manifest import load_manifest
    from shoplens.sdk.client import ShoplensClient
    from shoplens.sdk.importer import ApiSink, import_catalog
    from shoplens.sdk.runtime import DeviceRuntime, FlowOptions, resolve_bundles
    from shoplens.settings import Settings

    look = grocery_store()
    data = load_grocery(look.path or fetch_grocery_store(), products)
    embedder, detector = resolve_bundles(bundle_dir, embedder_required=False)
    embedder = embedder or _reference_embedder(workdir)
    model_id = load_manifest(embedder).embedder.model_id  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    tag = (f"-{products}p" if products else "") + (f"-det{min_box:g}" if catalog_detect and detector else "")
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
            summary = import_catalog(entries, embedder=embedder, detector=detector if catalog_detect else None, sink=ApiSink(admin_client, model_id), state_path=state, workers=workers, batch_size=64, progress=progress, total=len(entries), min_box_fraction=min_box)
            index_s = time.perf_counter() - t0
            rows = admin_client.stats()["rows"]
        if summary.failed:
            console.print(f"[yellow]{len(summary.failed)} catalog images skipped[/]: {summary.failed[:3]}")
        with ShoplensClient(svc.url, device) as probe:
            settle_s = _wait_until_indexed(probe, model_id, load_manifest(embedder).embedder.dim)  # type: ignore[union-attr]
        console.print(f"indexed {summary.imported} new images ({summary.already_done} already indexed) in {index_s:.1f} s; the index holds {rows}; search settled after {settle_s:.1f} s")
        rt = DeviceRuntime.from_bundle(embedder=embedder, detector=detector, options=FlowOptions(max_objects=1, min_box_fraction=min_box))
        outcomes: list[QueryOutcome] = []
        t0 = time.perf_counter()
        with ShoplensClient(svc.url, device) as client, Progress(disable=not progress) as bar:
            task = bar.add_task("searching val photos", total=len(queries))
            for photo, expected in queries:
                result, response = rt.search(photo, client, top_k=5)
                obj = result.objects[0]
                ranked = [h.model_dump() for h in response.results[0].hits]
                outcomes.append(QueryOutcome(photo, expected, ranked, obj.box if obj.source != "whole_image" else None, obj.label, obj.score, obj.source, result.timings_ms, result.payload_bytes, photo.stat().st_size))
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
        jpeg_bytes_per_query=statistics.mean(o.jpeg_bytes for o in outcomes),
        model_id=model_id,
        detector=detector.name if detector else "",
        report=str(report_path),
        detector_crops=sum(o.source == "detector" for o in outcomes),
    )
    _write_report(report_path, demo, outcomes[:report_cards])
    (workdir / "last_summary.json").write_text(json.dumps(demo.__dict__, indent=2, default=str))
    return demo


def _write_report(path: Path, demo: DemoSummary, outcomes: list[QueryOutcome]) -> None:
    import html as h

    from shoplens.sdk.images import load_rgb
    from shoplens.sdk.report import ReportCard, annotate, render_html

    cards = []
    for o in outcomes:
        rgb = load_rgb(o.photo)
        pic = annotate(rgb, [o.box] if o.box else [], [f"{o.label}" if o.label else ""])
        cards.append(ReportCard(f"{o.photo.name}: expected {o.expected}", pic, [{"label": o.label or "whole photo", "score": o.score, "hits": o.ranked, "expected": o.expected}]))
    summary = (
        f"<p>{demo.queries} shop photos searched against {demo.catalog_images} catalog images of {demo.products} products. "
        f"<b>recall@1 {demo.recall_at_1:.3f}</b>, recall@5 {demo.recall_at_5:.3f}. Model {h.escape(demo.model_id)}. "
        f"Uploaded per query: {demo.bytes_per_query:.0f} bytes of vector (the photos average {demo.jpeg_bytes_per_query:.0f} bytes and never leave the device). "
        f"Correct products are marked green. Showing the first {len(cards)} queries.</p>"
    )
    path.write_text(render_html(cards, "shoplens demo: Grocery Store val photos", summary))


def demo(
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Folder with the embedder and detector bundles (default: mobile_assets/)."),
    queries: Optional[int] = typer.Option(None, "--queries", min=1, help="Search only the first N val photos (default: all 296)."),
    products: Optional[int] = typer.Option(None, "--products", min=2, max=81, help="Use only the first N of the 81 products (catalog and queries), for a quick look."),
    workers: int = typer.Option(2, "--workers", min=1, max=64, help="Processes for the catalog import."),
    report: Path = typer.Option(Path("demo_report.html"), "--report", help="Where to write the HTML report."),
    min_box: float = typer.Option(0.3, "--min-box", min=0.0, max=1.0, help="A detection is the product only if it covers this share of the photo; else the whole photo is embedded."),
    catalog_detect: bool = typer.Option(False, "--catalog-detect/--no-catalog-detect", help="Also crop catalog images to their main detection (slower; the catalog photos are already framed on the product)."),
    fresh: bool = typer.Option(False, "--fresh", help="Rebuild the demo index from scratch instead of reusing the cached one."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Search-by-image end to end on real shop photos: index the catalog, search the val photos, report recall.

    Everything runs on this machine (service on 127.0.0.1, Milvus Lite in the cache); the
    second run reuses the index and takes seconds.
    """
    from shoplens.extras import require_extra
    from shoplens.sdk.cli import default_bundle_dir
    from shoplens.settings import get_settings

    require_extra("device")
    require_extra("cloud")
    t0 = time.perf_counter()
    s = run_demo(bundle_dir=bundle or default_bundle_dir(), workdir=get_settings().cache_dir / "demo", report_path=report.resolve(), max_queries=queries, products=products, workers=workers, min_box=min_box, catalog_detect=catalog_detect, fresh=fresh, progress=progress)
    table = Table(title="shoplens demo")
    table.add_column("metric")
    table.add_column("value")
    table.add_row("queries (val photos)", str(s.queries))
    table.add_row("catalog", f"{s.catalog_images} images of {s.products} products")
    table.add_row("embedded region", f"detected box in {s.detector_crops}, whole photo in {s.queries - s.detector_crops}" if s.detector else "whole photo (no detector bundle)")
    table.add_row("recall@1 (product)", f"{s.recall_at_1:.3f}")
    table.add_row("recall@5 (product)", f"{s.recall_at_5:.3f}")
    for stage, v in s.latency_ms.items():
        table.add_row(f"latency {stage} (ms)", f"p50 {v['p50']:.1f}  p90 {v['p90']:.1f}")
    table.add_row("uploaded per query", f"{s.bytes_per_query:.0f} B vector (photo: {s.jpeg_bytes_per_query:.0f} B, never sent)")
    table.add_row("index / search time", f"{s.index_seconds:.1f} s / {s.query_seconds:.1f} s")
    table.add_row("total", f"{time.perf_counter() - t0:.1f} s")
    console.print(table)
    console.print(f"report: [bold]{s.report}[/]")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
