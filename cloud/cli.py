"""``shoplens serve`` and ``shoplens reindex``: the cloud service's commands.

Heavy imports (fastapi, uvicorn, pymilvus) happen inside the commands so the
root CLI stays fast and works without the ``cloud`` extra. The root CLI
(``shoplens/cli.py``) mounts :data:`app`; ``reindex --catalog`` gets the catalog
embedding (the sdk's importer) from it as ``ctx.obj.embed_catalog``, so the cloud
never imports the sdk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

app = typer.Typer()


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
    from shoplens.cloud.serving import shared_state_for_workers, uvicorn_options

    options = uvicorn_options(settings)  # proxy headers only from TRUSTED_PROXIES; keys redacted in the access log
    if workers == 1:
        from shoplens.cloud.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, workers=1,
                    timeout_graceful_shutdown=settings.shutdown_grace_s, **options)
    else:  # each worker process builds its own app (and Milvus connection) from the same environment,
        # and all of them keep their rate-limit buckets in one shared file
        with shared_state_for_workers(workers):
            uvicorn.run("shoplens.cloud.app:create_app", factory=True, host=host, port=port, log_level=log_level,
                        workers=workers, timeout_graceful_shutdown=settings.shutdown_grace_s, **options)

@app.command()
def reindex(
    ctx: typer.Context,
    rows: Path | None = typer.Option(None, "--rows", exists=True, dir_okay=False,
                                     help="JSONL of embedded catalog rows (one contract CatalogImage per line)."),
    catalog: Path | None = typer.Option(None, "--catalog",
                                        help="Embed this catalog (csv/jsonl/folder, as `shoplens index`) with --bundle first, instead of --rows."),
    detector: Path | None = typer.Option(None, "--detector", help="Detector bundle for --catalog (default: none, whole images)."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Embedding processes for --catalog."),
    bundle: Path | None = typer.Option(None, "--bundle", help="The new embedder bundle (its manifest gives the model id)."),
    model_id: str | None = typer.Option(None, "--model-id", help="The new model id (instead of --bundle)."),
    promote: bool = typer.Option(False, "--promote", help="Make the new model the current one at once (what new apps should use)."),
    drop_old: bool = typer.Option(False, "--drop-old", help="Promote, then retire the previous current model (its apps get 410) and drop its collection."),
    url: str | None = typer.Option(None, "--url", help="Go through a running service's admin API (needed for a Lite file it holds)."),
    admin_key: str | None = typer.Option(None, "--admin-key", envvar="SHOPLENS_REINDEX_ADMIN_KEY",
                                         help="Admin key for --url (default: the first SHOPLENS_ADMIN_KEYS)."),
) -> None:
    """Build a collection for a model id from --rows (or --catalog) and serve it beside the models already served.

    Apps on the previous model keep working: the new one is served as supported
    (or current with --promote); retire the old one when its apps have updated
    (`shoplens models`). With --catalog the catalog is first embedded with the new
    --bundle (resumable, like `shoplens index`) into a rows file in the cache.
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
        embed_catalog = getattr(ctx.obj, "embed_catalog", None)  # the sdk's catalog import, handed over by the root CLI
        if embed_catalog is None:
            raise typer.BadParameter("this command line cannot embed a catalog: give --rows", param_hint="--catalog")
        rows = embed_catalog(catalog, bundle, detector, new_id, workers, settings.cache_dir)
    with _catalog_admin(ctx, url, admin_key) as admin:
        result = ri.reindex(admin, new_id, rows, promote=promote, drop_old=drop_old)
    typer.echo(ri.dumps(result))


@contextmanager
def _catalog_admin(ctx: typer.Context, url: str | None, admin_key: str | None,
                   direct: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """The catalog's admin operations: through a running service's API with ``url`` (the sdk's client,
    handed over by the root CLI), else straight on the Milvus in SHOPLENS_MILVUS_URI (``direct`` makes
    the operations from the store; default: the re-index and model operations, ``StoreAdmin``)."""
    from shoplens.cloud.reindex import StoreAdmin
    from shoplens.settings import get_settings

    settings = get_settings()
    if url:
        key = admin_key or (settings.admin_keys[0].get_secret_value() if settings.admin_keys else "")
        if not key:
            raise typer.BadParameter("--url needs an admin key (--admin-key or SHOPLENS_ADMIN_KEYS)")
        service_admin = getattr(ctx.obj, "service_admin", None)
        if service_admin is None:
            raise typer.BadParameter("this command line cannot reach a service: leave out --url", param_hint="--url")
        with service_admin(url, key) as admin:
            yield admin
        return
    from shoplens.cloud.store import CatalogStore

    store = CatalogStore(settings)
    try:
        yield (direct or StoreAdmin)(store)
    finally:
        store.close()


models_app = typer.Typer(no_args_is_help=True, help="The embedder model ids the service serves, and their lifecycle: "
                         "current (what new apps use), supported, deprecated (with a sunset date), retired (410).")
app.add_typer(models_app, name="models")

_URL = typer.Option(None, "--url", help="A running service's base URL (needed for a Lite file it holds); default: SHOPLENS_MILVUS_URI directly.")
_KEY = typer.Option(None, "--admin-key", envvar="SHOPLENS_REINDEX_ADMIN_KEY", help="Admin key for --url (default: the first SHOPLENS_ADMIN_KEYS).")


def _print_models(models: list[Any]) -> None:
    typer.echo(json.dumps([m.model_dump(mode="json") for m in models], indent=2))


@models_app.command("list")
def models_list(ctx: typer.Context, url: str | None = _URL, admin_key: str | None = _KEY) -> None:
    """Every registered model id with its status, sunset date, bundle URL and collection (JSON)."""
    with _catalog_admin(ctx, url, admin_key) as admin:
        _print_models(admin.models())


def _change(ctx: typer.Context, model_id: str, action: str, url: str | None, admin_key: str | None, **changes: Any) -> None:
    from shoplens.contract.errors import ShoplensError

    with _catalog_admin(ctx, url, admin_key) as admin:
        try:
            _print_models([admin.change(model_id, action, **changes)])
        except ShoplensError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from None


@models_app.command("promote")
def models_promote(ctx: typer.Context, model_id: str = typer.Argument(..., help="The model id to make current."),
                   bundle_url: str | None = typer.Option(None, "--bundle-url", help="Where apps download its bundle (https://); named in 410s."),
                   url: str | None = _URL, admin_key: str | None = _KEY) -> None:
    """Make MODEL_ID the current model (what new apps should use); the previous current one stays supported."""
    _change(ctx, model_id, "promote", url, admin_key, bundle_url=bundle_url)


@models_app.command("support")
def models_support(ctx: typer.Context, model_id: str = typer.Argument(...), url: str | None = _URL, admin_key: str | None = _KEY) -> None:
    """Serve MODEL_ID as supported (e.g. re-activate a retired model while its collection exists)."""
    _change(ctx, model_id, "support", url, admin_key)


@models_app.command("deprecate")
def models_deprecate(ctx: typer.Context, model_id: str = typer.Argument(...),
                     sunset: str = typer.Option(..., "--sunset", help="The date it will be retired (YYYY-MM-DD); sent as the Sunset header."),
                     url: str | None = _URL, admin_key: str | None = _KEY) -> None:
    """Keep serving MODEL_ID, with Deprecation and Sunset headers on its answers."""
    _change(ctx, model_id, "deprecate", url, admin_key, sunset=sunset)


@models_app.command("retire")
def models_retire(ctx: typer.Context, model_id: str = typer.Argument(...), url: str | None = _URL, admin_key: str | None = _KEY) -> None:
    """Stop serving MODEL_ID: its searches get 410 naming the current model (its collection is kept until dropped)."""
    _change(ctx, model_id, "retire", url, admin_key)


sightings_app = typer.Typer(no_args_is_help=True, help="Confirmed sightings (POST /v1/feedback): list the confirmations "
                            "and promoted sightings, approve or reject held ones, remove promoted ones (docs/cloud.md).")
app.add_typer(sightings_app, name="sightings")
_MODEL_ID = typer.Option(None, "--model-id", help="The model id whose sightings (default: the current model).")
_ID = typer.Argument(..., help="The sighting id (from `shoplens sightings list`).")


@contextmanager
def _sighting_admin(ctx: typer.Context, url: str | None, admin_key: str | None) -> Iterator[Any]:
    """The review operations, through ``url``'s API or straight on Milvus; errors end the command with exit 1."""
    from shoplens.cloud.sighting_rule import Rule
    from shoplens.cloud.sightings import SightingAdmin
    from shoplens.contract.errors import ShoplensError
    from shoplens.settings import get_settings

    rule = Rule.from_settings(get_settings())
    with _catalog_admin(ctx, url, admin_key, direct=lambda store: SightingAdmin(store, rule)) as admin:
        try:
            yield admin
        except ShoplensError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from None


def _print(items: list[Any]) -> None:
    typer.echo(json.dumps([i.model_dump(mode="json") for i in items], indent=2))


@sightings_app.command("list")
def sightings_list(ctx: typer.Context, model_id: str | None = _MODEL_ID,
                   product: str | None = typer.Option(None, "--product", help="One product's sightings only."),
                   status: str | None = typer.Option(None, "--status", help="pending, held or promoted only."),
                   url: str | None = _URL, admin_key: str | None = _KEY) -> None:
    """Confirmations (pending, held) and promoted sightings, oldest first, with key hashes and how close each
    is to its product's own images (JSON; never a vector)."""
    from shoplens.contract.feedback import SightingStatus

    try:
        wanted = SightingStatus(status) if status else None
    except ValueError:
        raise typer.BadParameter("one of pending, held, promoted", param_hint="--status") from None
    with _sighting_admin(ctx, url, admin_key) as admin:
        _print(admin.sightings(model_id=model_id, product_id=product, status=wanted))


@sightings_app.command("approve")
def sightings_approve(ctx: typer.Context, sighting_id: str = _ID, model_id: str | None = _MODEL_ID,
                      url: str | None = _URL, admin_key: str | None = _KEY) -> None:
    """Promote a pending or held confirmation into the catalog as it is (refused at the product's cap)."""
    with _sighting_admin(ctx, url, admin_key) as admin:
        _print([admin.approve_sighting(sighting_id, model_id=model_id)])


@sightings_app.command("reject")
def sightings_reject(ctx: typer.Context, sighting_id: str = _ID, model_id: str | None = _MODEL_ID,
                     url: str | None = _URL, admin_key: str | None = _KEY) -> None:
    """Delete a pending or held confirmation."""
    with _sighting_admin(ctx, url, admin_key) as admin:
        _print([admin.reject_sighting(sighting_id, model_id=model_id)])


@sightings_app.command("remove")
def sightings_remove(ctx: typer.Context, sighting_id: str = _ID, model_id: str | None = _MODEL_ID,
                     url: str | None = _URL, admin_key: str | None = _KEY) -> None:
    """Delete a sighting; a promoted one is deleted from the catalog (and search) too."""
    with _sighting_admin(ctx, url, admin_key) as admin:
        _print([admin.remove_sighting(sighting_id, model_id=model_id)])
