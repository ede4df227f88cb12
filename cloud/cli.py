"""``shoplens serve`` and ``shoplens reindex``: the cloud service's commands.

Heavy imports (fastapi, uvicorn, pymilvus) happen inside the commands so the
root CLI stays fast and works without the ``cloud`` extra.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _embed_catalog(catalog: Path, bundle: Path, detector: Path | None, model_id: str, workers: int, cache_dir: Path) -> Path:
    """The re-index's vectors: the catalog import with the new bundle, into a rows file (resumable)."""
    from shoplens.extras import require_extra

    require_extra("device")
    from shoplens.sdk.catalog import read_catalog
    from shoplens.sdk.importer import JsonlSink, import_catalog

    work = cache_dir / "reindex" / f"{catalog.stem}-{model_id}"
    rows = work / "rows.jsonl"
    entries = list(read_catalog(catalog))
    summary = import_catalog(entries, embedder=bundle, detector=detector, sink=JsonlSink(rows, model_id), state_path=work / "state.db", workers=workers, total=len(entries))
    typer.echo(f"embedded {summary.imported} images ({summary.already_done} from an earlier run, {len(summary.failed)} failed) into {rows}", err=True)
    if not rows.is_file():
        raise typer.BadParameter(f"no image of {catalog} could be embedded", param_hint="--catalog")
    return rows


def register(app: typer.Typer) -> None:
    """Add the cloud commands to the root ``shoplens`` app."""

    @app.command()
    def serve(
        host: str = typer.Option("127.0.0.1", help="Bind address (use 0.0.0.0 only behind a proxy/firewall)."),
        port: int = typer.Option(8000, help="TCP port."),
        log_level: str = typer.Option("info", help="uvicorn log level."),
        workers: int = typer.Option(1, "--workers", min=1, max=64,
                                    help="Worker processes (Milvus server/cluster only: a Lite file is locked to one process). "
                                         "See docs/cloud.md before raising it on a small machine."),
    ) -> None:
        """Run the search service (FastAPI + uvicorn) over the Milvus in SHOPLENS_MILVUS_URI.

        One worker by default: a Milvus Lite file is locked to one process, and the
        service's work is I/O-bound on Milvus (measured: docs/cloud.md). uvloop and
        httptools (in the `cloud` extra) are used when installed.
        """
        import logging

        import uvicorn

        from shoplens.settings import get_settings

        settings = get_settings()
        if workers > 1 and settings.milvus_is_lite:
            raise typer.BadParameter(
                f"a Milvus Lite file ({settings.milvus_uri}) is locked to one process; use --workers 1, "
                "or point SHOPLENS_MILVUS_URI at a Milvus server", param_hint="--workers")
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if workers == 1:
            from shoplens.cloud.app import create_app

            uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, workers=1)
        else:  # each worker process builds its own app (and Milvus connection) from the same environment
            uvicorn.run("shoplens.cloud.app:create_app", factory=True, host=host, port=port, log_level=log_level, workers=workers)

    @app.command()
    def reindex(
        rows: Path | None = typer.Option(None, "--rows", exists=True, dir_okay=False,
                                         help="JSONL of embedded catalog rows (one contract CatalogImage per line)."),
        catalog: Path | None = typer.Option(None, "--catalog",
                                            help="Embed this catalog (csv/jsonl/folder, as `shoplens index`) with --bundle first, instead of --rows."),
        detector: Path | None = typer.Option(None, "--detector", help="Detector bundle for --catalog (default: none, whole images)."),
        workers: int = typer.Option(1, "--workers", min=1, max=64, help="Embedding processes for --catalog."),
        bundle: Path | None = typer.Option(None, "--bundle", help="The new embedder bundle (its manifest gives the model id)."),
        model_id: str | None = typer.Option(None, "--model-id", help="The new model id (instead of --bundle)."),
        drop_old: bool = typer.Option(False, "--drop-old", help="Drop the previously served collection after the swap."),
        url: str | None = typer.Option(None, "--url", help="Go through a running service's admin API (needed for a Lite file it holds)."),
        admin_key: str | None = typer.Option(None, "--admin-key", envvar="SHOPLENS_REINDEX_ADMIN_KEY",
                                             help="Admin key for --url (default: the first SHOPLENS_ADMIN_KEYS)."),
    ) -> None:
        """Build a collection for a new model id from --rows (or --catalog), then swap the alias atomically.

        Searches keep being served by the old collection until the swap; the
        old one is kept (rollback = activate it again) unless --drop-old.
        With --catalog the catalog is first embedded with the new --bundle
        (resumable, like `shoplens index`) into a rows file in the cache.
        """
        from shoplens.cloud import reindex as ri
        from shoplens.settings import get_settings

        if (bundle is None) == (model_id is None):
            raise typer.BadParameter("give exactly one of --bundle or --model-id")
        if (rows is None) == (catalog is None):
            raise typer.BadParameter("give exactly one of --rows or --catalog")
        if catalog is not None and bundle is None:
            raise typer.BadParameter("--catalog needs --bundle (the embedder that makes the new vectors)")
        new_id = ri.model_id_from_bundle(bundle) if bundle is not None else str(model_id)
        settings = get_settings()
        if catalog is not None:
            rows = _embed_catalog(catalog, bundle, detector, new_id, workers, settings.cache_dir)  # type: ignore[arg-type]
        if url:
            key = admin_key or (settings.admin_keys[0].get_secret_value() if settings.admin_keys else "")
            if not key:
                raise typer.BadParameter("--url needs an admin key (--admin-key or SHOPLENS_ADMIN_KEYS)")
            result = ri.reindex_http(url, key, new_id, rows, drop_old=drop_old)
        else:
            from shoplens.cloud.store import CatalogStore

            store = CatalogStore(settings)
            try:
                result = ri.reindex_direct(store, new_id, rows, drop_old=drop_old)
            finally:
                store.close()
        typer.echo(ri.dumps(result))
