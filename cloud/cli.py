"""``shoplens serve`` and ``shoplens reindex``: the cloud service's commands.

Heavy imports (fastapi, uvicorn, pymilvus) happen inside the commands so the
root CLI stays fast and works without the ``cloud`` extra.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the cloud commands to the root ``shoplens`` app."""

    @app.command()
    def serve(
        host: str = typer.Option("127.0.0.1", help="Bind address (use 0.0.0.0 only behind a proxy/firewall)."),
        port: int = typer.Option(8000, help="TCP port."),
        log_level: str = typer.Option("info", help="uvicorn log level."),
    ) -> None:
        """Run the search service (FastAPI + uvicorn) over the Milvus in SHOPLENS_MILVUS_URI.

        One worker: a Milvus Lite file is locked to one process, and the
        service's work is I/O-bound on Milvus (see docs/cloud.md).
        """
        import logging

        import uvicorn

        from shoplens.cloud.app import create_app
        from shoplens.settings import get_settings

        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        uvicorn.run(create_app(get_settings()), host=host, port=port, log_level=log_level, workers=1)

    @app.command()
    def reindex(
        rows: Path = typer.Option(..., "--rows", exists=True, dir_okay=False,
                                  help="JSONL of embedded catalog rows (one contract CatalogImage per line)."),
        bundle: Path | None = typer.Option(None, "--bundle", help="The new embedder bundle (its manifest gives the model id)."),
        model_id: str | None = typer.Option(None, "--model-id", help="The new model id (instead of --bundle)."),
        drop_old: bool = typer.Option(False, "--drop-old", help="Drop the previously served collection after the swap."),
        url: str | None = typer.Option(None, "--url", help="Go through a running service's admin API (needed for a Lite file it holds)."),
        admin_key: str | None = typer.Option(None, "--admin-key", envvar="SHOPLENS_REINDEX_ADMIN_KEY",
                                             help="Admin key for --url (default: the first SHOPLENS_ADMIN_KEYS)."),
    ) -> None:
        """Build a collection for a new model id from --rows, then swap the alias atomically.

        Searches keep being served by the old collection until the swap; the
        old one is kept (rollback = activate it again) unless --drop-old.
        """
        from shoplens.cloud import reindex as ri
        from shoplens.settings import get_settings

        if (bundle is None) == (model_id is None):
            raise typer.BadParameter("give exactly one of --bundle or --model-id")
        new_id = ri.model_id_from_bundle(bundle) if bundle is not None else str(model_id)
        settings = get_settings()
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
