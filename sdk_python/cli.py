"""``shoplens search`` (the phone's flow on one photo), ``shoplens index`` (catalog import) and
``shoplens manifest wrap-embedder``.

The root CLI (``shoplens/cli.py``) mounts :data:`app` and :data:`manifest_app`; this module
imports nothing of it. What ``index`` needs from the cloud (a sink straight into Milvus, when
there is no ``--server``) comes from the root CLI too, as ``ctx.obj.direct_sink``: the sdk never
imports the cloud.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from shoplens.contract.manifest import MAX_OBJECTS

console = Console()
notices = Console(stderr=True)  # file notices stay off stdout, so --json output is pure JSON
app = typer.Typer()
manifest_app = typer.Typer()


def default_bundle_dir() -> Path:
    """``mobile_assets/`` of this checkout: where the converters put the bundles we ship."""
    from shoplens.settings import REPO_ROOT

    return (REPO_ROOT / "mobile_assets") if REPO_ROOT else Path("mobile_assets")


def _parse_box(box: str | None) -> tuple[float, float, float, float] | None:
    if box is None:
        return None
    try:
        x, y, w, h = (float(v) for v in box.split(","))
    except ValueError:
        raise typer.BadParameter("expected x,y,w,h in photo pixels, e.g. 120,80,300,400", param_hint="--box") from None
    if w <= 0 or h <= 0:
        raise typer.BadParameter("width and height must be positive", param_hint="--box")
    return x, y, w, h


@app.command()
def search(
    photo: Path = typer.Argument(..., help="A photo (JPEG/PNG/WebP) as a shopper would take it."),
    bundle: Path = typer.Option(None, "--bundle", help="Folder with the embedder and detector bundles (default: mobile_assets/)."),
    embedder: Optional[Path] = typer.Option(None, "--embedder", help="An embedder bundle folder (overrides --bundle's)."),
    detector: Optional[Path] = typer.Option(None, "--detector", help="A detector bundle folder (overrides --bundle's)."),
    server: str = typer.Option("http://127.0.0.1:8000", "--server", help="Base URL of the shoplens service."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="SHOPLENS_API_KEY", help="Device (or admin) key."),
    box: Optional[str] = typer.Option(None, "--box", help="x,y,w,h of the object the shopper tapped (skips detection)."),
    top_k: int = typer.Option(5, "--top-k", min=1, max=100, help="Products per object."),
    encoding: str = typer.Option("i8", "--encoding", help="Vector wire encoding: f32, f16 or i8."),
    max_objects: Optional[int] = typer.Option(None, "--max-objects", min=1, max=MAX_OBJECTS,
                                              help="Boxes to search per photo (default: the detector manifest's object_choice.max_objects)."),
    min_box: Optional[float] = typer.Option(None, "--min-box", min=0.0, max=1.0,
                                            help="Ignore detections smaller than this share of the photo (default: the detector manifest's object_choice.min_box_fraction)."),
    annotated: Optional[Path] = typer.Option(None, "--annotated", help="Write the photo with numbered boxes here (JPEG/PNG)."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Write an HTML page with the results and thumbnails."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Run the phone's flow on PHOTO (detect, crop, embed, encode) and search the catalog.

    Every object the detector manifest's rule (object_choice) picks is searched in one batch
    request, with the whole photo when the rule says so; each gets its own results, and the best
    match merges them per product. Only the encoded vectors are sent to --server; the photo
    never leaves this machine.
    """
    from shoplens.contract.codecs import Encoding
    from shoplens.extras import require_extra

    require_extra("device")
    from shoplens.sdk.client import ShoplensClient
    from shoplens.sdk.images import load_rgb
    from shoplens.sdk.report import ReportCard, annotate, object_label, render_html
    from shoplens.sdk.runtime import DeviceRuntime, FlowOptions, fuse_hits

    rt = DeviceRuntime.from_bundle(
        None if (embedder and (detector or box)) else (bundle or default_bundle_dir()),
        embedder=embedder,
        detector=detector,
        options=FlowOptions(max_objects=max_objects, min_box_fraction=min_box, encoding=Encoding(encoding)),
    )
    rgb = load_rgb(photo)
    with ShoplensClient(server, api_key) as client:
        result, response = rt.search(rgb, client, box=_parse_box(box), top_k=top_k)
    objects = []
    for obj, res in zip(result.objects, response.results if response else []):
        objects.append({"label": object_label(obj.label, obj.source), "score": obj.score, "box": obj.box, "source": obj.source, "hits": [h.model_dump() for h in res.hits]})
    best = [h.model_dump() for h in fuse_hits((res.hits for res in response.results), top_k)] if response else []
    if as_json:
        typer.echo(json.dumps({"model_id": result.model_id, "grouping": response.grouping if response else None, "payload_bytes": result.payload_bytes,
                               "timings_ms": result.timings_ms, "object_choice": rt.choice.model_dump(), "best": best, "objects": objects}, indent=2, default=str))
    else:
        tables = [(f"object {i}: {obj['label']} ({obj['score']:.2f}) box {[round(v) for v in obj['box']]}", obj["hits"]) for i, obj in enumerate(objects, start=1)]
        if len(objects) > 1:
            tables.insert(0, ("best match: every object's results merged per product", best))
        for title, hits in tables:
            t = Table(title=title)
            for col in ("#", "product", "title", "score", "category", "price"):
                t.add_column(col)
            for rank, h in enumerate(hits, start=1):
                t.add_row(str(rank), h["product_id"], h["title"], f"{h['score']:.3f}", h["category"], "" if h["price"] is None else f"{h['price']:.2f} {h['currency']}")
            console.print(t)
        stages = ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings_ms.items())
        console.print(f"{len(objects)} objects in one request; uploaded {result.payload_bytes} bytes of vectors ({result.encoding.value}); {stages}")
    picture = annotate(rgb, [o["box"] for o in objects], [o["label"] for o in objects])
    if annotated:
        picture.save(annotated)
        notices.print(f"annotated photo: {annotated}")
    if html_out:
        html_out.write_text(render_html([ReportCard(str(photo), picture, objects, best if len(objects) > 1 else None)], f"shoplens search: {photo.name}"))
        notices.print(f"results page: {html_out}")


@app.command()
def index(
    ctx: typer.Context,
    catalog: Path = typer.Option(..., "--catalog", help="catalog.csv, catalog.jsonl or a folder of <product_id>/ image folders (rows with role photo/val are labelled training photos: skipped)."),
    bundle: Optional[list[Path]] = typer.Option(None, "--bundle", help="Folder with the embedder and detector bundles (default: mobile_assets/). "
                                                "Repeat it to index for several models in one pass (e.g. during a rollout); the detector is the first one's."),
    embedder: Optional[list[Path]] = typer.Option(None, "--embedder", help="An embedder bundle folder (overrides --bundle's); repeat it for several models."),
    detector: Optional[Path] = typer.Option(None, "--detector", help="A detector bundle folder (overrides --bundle's)."),
    detect: bool = typer.Option(False, "--detect/--no-detector", help="Crop each catalog image to its main detection (the bundle's detector, the manifest's rule, "
                                "top box) before embedding; --detector implies it. Off by default: images are embedded whole, which measured 4 "
                                "points of R@1 better on the Grocery catalog (docs/sdk.md, Catalog import)."),
    min_box: Optional[float] = typer.Option(None, "--min-box", min=0.0, max=1.0, help="With --detect: ignore detections smaller than this share of the image, then "
                                            "the whole image is embedded (default: the detector manifest's object_choice.min_box_fraction, the app's rule)."),
    server: Optional[str] = typer.Option(None, "--server", help="Write through this service's admin API (else straight to Milvus at SHOPLENS_MILVUS_URI)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="SHOPLENS_ADMIN_KEY", help="Admin key for --server."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Embedding processes (--engine ray: embedding actors on the cluster, at most)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, max=1000, help="Images per write."),
    state: Optional[Path] = typer.Option(None, "--state", help="Resume ledger (default: <cache>/imports/<catalog name>.db)."),
    engine: str = typer.Option("local", "--engine", help="local (processes on this machine) or ray (Ray Data: a private local Ray, or the cluster at --ray-address)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --engine ray: attach to this Ray cluster: auto (RAY_ADDRESS or the `ray start` "
                                              "instance on this machine), HOST:PORT (its GCS; run on a cluster node) or ray://HOST:PORT (its Ray Client server)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Embed every catalog image with the phone's bundle and write it to the index.

    Resumable (rerun after a crash redoes nothing), exact duplicates indexed once,
    bad images reported and skipped. With several --bundle (or --embedder), each image
    is read and detected once and written to every model's collection (resumable per model).
    """
    from shoplens.extras import require_extra
    from shoplens.settings import get_settings

    require_extra("device")
    from shoplens.sdk.catalog import read_catalog
    from shoplens.sdk.importer import import_catalog
    from shoplens.contract.manifest import load_manifest
    from shoplens.sdk.runtime import resolve_bundles

    roots = list(bundle or []) or [default_bundle_dir()]
    explicit = list(embedder or [])
    resolved = [resolve_bundles(root, embedder=explicit[k] if k < len(explicit) else None, detector=detector,
                                with_detector=detect or detector is not None) for k, root in enumerate(roots)]
    resolved += [resolve_bundles(None, embedder=e, with_detector=False) for e in explicit[len(roots):]]
    embs, det = [emb for emb, _ in resolved], resolved[0][1]
    model_ids = [load_manifest(e).embedder.model_id for e in embs]  # type: ignore[union-attr]
    if len(set(model_ids)) != len(model_ids):
        raise typer.BadParameter(f"the same model id twice: {', '.join(model_ids)}", param_hint="--bundle")
    if engine not in ("local", "ray"):
        raise typer.BadParameter("choose local or ray", param_hint="--engine")
    if engine == "ray" and len(embs) > 1:
        raise typer.BadParameter("the ray engine indexes one model at a time; use --engine local for several", param_hint="--engine")
    if ray_address and engine != "ray":
        raise typer.BadParameter("--ray-address needs --engine ray", param_hint="--ray-address")
    model_id = ", ".join(model_ids)
    entries = list(read_catalog(catalog))
    state_path = state or get_settings().cache_dir / "imports" / f"{catalog.stem}-{model_ids[0]}.db"
    with _ray_session(engine, ray_address, workers):  # attach before any sink or ledger: a bad --ray-address writes nothing
        sinks, closers = zip(*(_make_sink(ctx, server, api_key, m) for m in model_ids))
        try:
            if engine == "ray":
                from shoplens.sdk.ray_import import import_catalog_ray

                summary = import_catalog_ray(entries, embedder=embs[0], detector=det, sink=sinks[0], state_path=state_path, workers=workers,
                                             batch_size=batch_size, address=ray_address, sink_factory=_sink_factory(ctx, server, api_key, model_ids[0]),
                                             min_box_fraction=min_box, progress=progress)
            else:
                summary = import_catalog(entries, embedder=embs, detector=det, sink=list(sinks), state_path=state_path, workers=workers,
                                         batch_size=batch_size, progress=progress, total=len(entries), min_box_fraction=min_box)
        finally:
            for close in closers:
                close()
    console.print(
        f"[bold]{summary.imported}[/] imported, {summary.already_done} already indexed (resumed), {summary.duplicates} exact duplicates, "
        f"{len(summary.failed)} failed, of {summary.total} in {summary.seconds:.1f} s ({summary.images_per_s:.1f} img/s); model {model_id}"
    )
    if summary.not_indexed:
        console.print(f"{summary.not_indexed} labelled shopper photos (role photo/val) not indexed: they are training data for `shoplens embedder train`")
    if summary.failed:
        t = Table(title="skipped images")
        t.add_column("image")
        t.add_column("reason")
        for image, reason in summary.failed[:50]:
            t.add_row(image, reason)
        console.print(t)
        if len(summary.failed) > 50:
            console.print(f"... and {len(summary.failed) - 50} more (see {state_path})")


@contextmanager
def _ray_session(engine: str, address: str | None, workers: int) -> Iterator[None]:
    """For --engine ray: Ray attached (or started) for the whole command, shut down after."""
    if engine != "ray":
        yield
        return
    from shoplens.sdk.ray_import import connect_ray

    started = connect_ray(address, workers)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def _api_sink(server: str, api_key: str | None, model_id: str) -> Any:
    """The service's admin API as a sink (module level: Ray workers rebuild it from a partial)."""
    from shoplens.sdk.client import ShoplensClient
    from shoplens.sdk.importer import ApiSink

    return ApiSink(ShoplensClient(server, api_key), model_id)


def _sink_factory(ctx: typer.Context, server: str | None, api_key: str | None, model_id: str) -> Callable[[], Any] | None:
    """What Ray workers call to open the same index, so each writes its own batches in parallel;
    None for a Milvus Lite file, which one process holds (the driver writes there)."""
    from shoplens.settings import get_settings

    if server:
        return functools.partial(_api_sink, server, api_key, model_id)
    settings = get_settings()
    direct_sink = getattr(ctx.obj, "direct_sink", None)
    if settings.milvus_is_lite or direct_sink is None:
        return None
    return functools.partial(direct_sink, model_id, settings)  # the driver's settings: workers need not share its environment


def _make_sink(ctx: typer.Context, server: str | None, api_key: str | None, model_id: str):  # type: ignore[no-untyped-def]
    if server:
        sink = _api_sink(server, api_key, model_id)
        return sink, sink.client.close
    direct_sink = getattr(ctx.obj, "direct_sink", None)  # the cloud's MilvusSink, handed over by the root CLI
    if direct_sink is None:
        raise typer.BadParameter("this command line cannot write straight to Milvus: give --server", param_hint="--server")
    sink = direct_sink(model_id)
    return sink, sink.close


def embed_catalog_rows(catalog: Path, bundle: Path, detector: Path | None, model_id: str, workers: int, cache_dir: Path) -> Path:
    """A re-index's vectors (``shoplens reindex --catalog``): the catalog import with the new
    bundle into a rows file in the cache (resumable); returns the file."""
    from shoplens.extras import require_extra

    require_extra("device")
    from shoplens.sdk.catalog import read_catalog
    from shoplens.sdk.importer import JsonlSink, import_catalog

    work = cache_dir / "reindex" / f"{catalog.stem}-{model_id}"
    rows = work / "rows.jsonl"
    entries = list(read_catalog(catalog))
    summary = import_catalog(entries, embedder=bundle, detector=detector, sink=JsonlSink(rows, model_id), state_path=work / "state.db", workers=workers, total=len(entries))
    typer.echo(f"embedded {summary.imported} images ({summary.already_done} from an earlier run, {len(summary.failed)} failed, "
               f"{summary.not_indexed} labelled photos not indexed) into {rows}", err=True)
    if not rows.is_file():
        raise typer.BadParameter(f"no image of {catalog} could be embedded", param_hint="--catalog")
    return rows


@manifest_app.command("wrap-embedder")
def wrap_embedder(
    model: Path = typer.Argument(..., help="A .tflite embedder (one image input, one vector output)."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write (manifest.json + the model)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name used in the model id (default: file stem)."),
    resize: str = typer.Option("stretch", "--resize", help="stretch, center_crop or letterbox."),
    link: bool = typer.Option(False, "--link", help="Symlink the model instead of copying it."),
) -> None:
    """Give an existing TFLite embedder a shoplens manifest (e.g. the ImageNet MobileNetV1 reference)."""
    from shoplens.extras import require_extra

    require_extra("device")
    from shoplens.sdk.wrap import wrap_tflite_embedder

    m = wrap_tflite_embedder(model, out, name=name, resize=resize, link=link)
    console.print(f"wrote {out / 'manifest.json'}: {m.embedder.dim}-d, model id {m.embedder.model_id}")  # type: ignore[union-attr]
