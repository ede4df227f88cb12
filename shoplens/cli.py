"""The ``shoplens`` command line: one entry point, a subcommand per job -- and the composition root.

Each package has its own Typer app (``sdk_python/cli.py``, ``cloud/cli.py``,
``converters/cli.py``, ``samples/demo/cli.py``); this module imports and mounts
them, and none of them imports this module. Those modules import heavy libraries
inside the commands, so ``shoplens --help`` works with any extra.

It is also the one place where the sdk and the cloud meet (tests/core/test_layering.py
lets no other module import both): a command of one that needs the other gets it
from :class:`Composition`, which the root callback puts in ``ctx.obj``:

- ``shoplens index`` without ``--server`` writes through the cloud's ``MilvusSink``
  (a ``shoplens.contract.sinks.CatalogSink``);
- ``shoplens reindex --catalog`` embeds the catalog with the sdk's importer;
- ``shoplens reindex --url`` runs the cloud's re-index steps through the sdk's admin client.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shoplens import __version__
from shoplens.contract.errors import ShoplensError

console = Console()
app = typer.Typer(
    name="shoplens",
    help="Search-by-image shopping: convert models for phones, run the device flow, serve the catalog search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
manifest_app = typer.Typer(help="Validate bundle manifests and export their JSON Schema.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")


def _version(value: bool) -> None:
    if value:
        console.print(f"shoplens {__version__}")
        raise typer.Exit()


def _milvus_sink(model_id: str, settings: Any = None) -> Any:
    """``settings``: the importing process's (Ray workers get them with this function, in a partial)."""
    from shoplens.cloud.milvus_sink import MilvusSink

    return MilvusSink(model_id, settings)


def _embed_catalog(catalog: Path, bundle: Path, detector: Path | None, model_id: str, workers: int, cache_dir: Path) -> Path:
    from shoplens.sdk.cli import embed_catalog_rows

    return embed_catalog_rows(catalog, bundle, detector, model_id, workers, cache_dir)


@contextmanager
def _service_admin(url: str, admin_key: str) -> Iterator[Any]:
    from shoplens.sdk.admin import ServiceAdmin
    from shoplens.sdk.client import ShoplensClient

    with ShoplensClient(url, admin_key, timeout=60.0) as client:
        yield ServiceAdmin(client)


@dataclass(frozen=True)
class Composition:
    """What one package's command takes from another; the commands find it in ``ctx.obj``."""

    #: (model id[, settings]) -> a CatalogSink straight into Milvus, with ``close()`` (``shoplens index`` without --server)
    direct_sink: Callable[..., Any] = _milvus_sink
    #: (catalog, bundle, detector, model id, workers, cache dir) -> a rows file (``shoplens reindex --catalog``)
    embed_catalog: Callable[[Path, Path, Path | None, str, int, Path], Path] = _embed_catalog
    #: (url, admin key) -> a context manager yielding the re-index's CatalogAdmin over HTTP (``shoplens reindex --url``)
    service_admin: Callable[[str, str], AbstractContextManager[Any]] = _service_admin


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Search-by-image shopping: convert models for phones, run the device flow, serve the catalog search."""
    ctx.obj = Composition()


@app.command()
def doctor(
    profile: str = typer.Option("demo", "--for", help="What you want to run: demo, cloud, device, convert, core. Decides what is required."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
    fix: bool = typer.Option(False, "--fix", help="Apply safe fixes (ultralytics offline config, cache dirs) first."),
) -> None:
    """Report installed extras, weights and datasets found, Milvus reachability and offline setup.

    Exits 1 when something the chosen profile (--for) requires is missing.
    """
    from shoplens.doctor import PROFILES, Status, failed_required, run_checks

    if profile not in PROFILES:
        raise typer.BadParameter(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}", param_hint="--for")
    if fix:
        from shoplens.offline import prepare_ultralytics

        prepare_ultralytics()
    checks = run_checks(profile)
    failures = failed_required(checks)
    if as_json:
        typer.echo(json.dumps([{**c.__dict__, "status": c.status.value} for c in checks], indent=2, default=str))
    else:
        table = Table(title=f"shoplens doctor (--for {profile})", show_lines=False)
        for col in ("", "check", "item", "detail", "what to do"):
            table.add_column(col, overflow="fold")
        style = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}
        for c in checks:
            table.add_row(f"[{style[c.status]}]{c.status.value}[/]", c.group, c.item, c.detail, c.fix)
        console.print(table)
        if failures:
            console.print(f"[bold red]{len(failures)} required check(s) failed[/] for --for {profile}.")
        else:
            console.print(f"[green]Everything --for {profile} needs is here.[/]")
    raise typer.Exit(1 if failures else 0)


@manifest_app.command("validate")
def manifest_validate(
    bundle: Path = typer.Argument(..., help="A bundle directory or its manifest.json."),
    check_files: bool = typer.Option(True, "--files/--no-files", help="Also check each artifact's size and sha256."),
) -> None:
    """Validate a bundle manifest against the contract (and its files)."""
    from shoplens.contract.manifest import load_manifest, verify_bundle

    m = verify_bundle(bundle) if check_files else load_manifest(bundle)
    console.print(f"[green]valid[/] {m.task.value} bundle {m.name!r} with {len(m.artifacts)} artifact(s)")


@manifest_app.command("schema")
def manifest_schema(out: Path | None = typer.Option(None, "--out", help="Write to this file instead of stdout.")) -> None:
    """Print (or write) the manifest's JSON Schema."""
    from shoplens.contract.manifest import manifest_json_schema, write_json_schema

    if out is None:
        typer.echo(json.dumps(manifest_json_schema(), indent=2, sort_keys=True))
    else:
        write_json_schema(out)
        console.print(f"wrote {out}")


def _mount() -> None:
    """Every subcommand, mounted here (their modules import only typer/rich at import time)."""
    from shoplens.cloud.cli import app as cloud_app
    from shoplens.converters.cli import register as converter_commands
    from shoplens.demo.cli import app as demo_app
    from shoplens.sdk.cli import app as sdk_app
    from shoplens.sdk.cli import manifest_app as sdk_manifest_app

    converters_app = typer.Typer()
    converter_commands(converters_app)  # `convert detector|embedder`, `embedder ...`, on an app of ours
    for sub in (converters_app, cloud_app, sdk_app, demo_app):  # nameless: their commands sit at the top level
        app.add_typer(sub)
    manifest_app.add_typer(sdk_manifest_app)  # `manifest wrap-embedder`


_mount()


def main() -> None:
    """Entry point: shoplens errors print as one clear line, not a traceback."""
    try:
        app()
    except ShoplensError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        sys.exit(2)
