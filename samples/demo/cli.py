"""``shoplens demo``: the command (the root CLI mounts :data:`app`); the run is :mod:`shoplens.demo.run`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
app = typer.Typer()


@app.command()
def demo(
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Folder with the embedder and detector bundles (default: mobile_assets/)."),
    queries: Optional[int] = typer.Option(None, "--queries", min=1, help="Search only the first N val photos (default: all 296)."),
    products: Optional[int] = typer.Option(None, "--products", min=2, max=81, help="Use only the first N of the 81 products (catalog and queries), for a quick look."),
    workers: int = typer.Option(2, "--workers", min=1, max=64, help="Processes for the catalog import."),
    report: Path = typer.Option(Path("demo_report.html"), "--report", help="Where to write the HTML report."),
    catalog_detect: bool = typer.Option(False, "--catalog-detect/--no-catalog-detect", help="Crop catalog images to their main detection first, as `shoplens index --detect` does (slower, and measured worse on this catalog: docs/sdk.md, Catalog import)."),
    fresh: bool = typer.Option(False, "--fresh", help="Rebuild the demo index from scratch instead of reusing the cached one."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Search-by-image end to end on real shop photos: index the catalog, search the val photos, report recall.

    Everything runs on this machine (service on 127.0.0.1, Milvus Lite in the cache); the
    second run reuses the index and takes seconds.
    """
    from shoplens.demo.run import run_demo
    from shoplens.extras import require_extra
    from shoplens.sdk.cli import default_bundle_dir
    from shoplens.settings import get_settings

    require_extra("device")
    require_extra("cloud")
    t0 = time.perf_counter()
    s = run_demo(bundle_dir=bundle or default_bundle_dir(), workdir=get_settings().cache_dir / "demo", report_path=report.resolve(), max_queries=queries, products=products, workers=workers, catalog_detect=catalog_detect, fresh=fresh, progress=progress)
    table = Table(title="shoplens demo")
    table.add_column("metric")
    table.add_column("value")
    table.add_row("queries (val photos)", str(s.queries))
    table.add_row("catalog", f"{s.catalog_images} images of {s.products} products")
    table.add_row("searched objects", f"{s.objects_per_query:.2f} per photo; a detected box in {s.detector_crops} of {s.queries} photos" if s.detector else "whole photo (no detector bundle)")
    table.add_row("recall@1 (product)", f"{s.recall_at_1:.3f}")
    table.add_row("recall@5 (product)", f"{s.recall_at_5:.3f}")
    for stage, v in s.latency_ms.items():
        table.add_row(f"latency {stage} (ms)", f"p50 {v['p50']:.1f}  p90 {v['p90']:.1f}")
    table.add_row("uploaded per query", f"{s.bytes_per_query:.0f} B of vectors (photo: {s.jpeg_bytes_per_query:.0f} B, never sent)")
    table.add_row("index / search time", f"{s.index_seconds:.1f} s / {s.query_seconds:.1f} s")
    table.add_row("total", f"{time.perf_counter() - t0:.1f} s")
    console.print(table)
    console.print(f"report: [bold]{s.report}[/]")
