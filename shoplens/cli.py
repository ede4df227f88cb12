"""The ``shoplens`` command line: one entry point, a subcommand per job.

Each package contributes its own Typer app (``converters/cli.py``,
``cloud/cli.py``, ``sdk_python/cli.py``); those modules import heavy
libraries inside the commands, so ``shoplens --help`` works with any extra.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

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


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Search-by-image shopping: convert models for phones, run the device flow, serve the catalog search."""


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


#: (module, function that adds its commands to the root app)
_PLUGINS = [
    ("shoplens.converters.cli", "register"),
    ("shoplens.cloud.cli", "register"),
    ("shoplens.sdk.cli", "register"),
    ("shoplens.demo", "register"),
]


def _load_plugins() -> None:
    for module, attr in _PLUGINS:
        spec = importlib.util.find_spec(module) if _parent_exists(module) else None
        if spec is None:
            continue
        getattr(importlib.import_module(module), attr)(app)


def _parent_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module.rsplit(".", 1)[0]) is not None
    except ModuleNotFoundError:
        return False


_load_plugins()


def main() -> None:
    """Entry point: shoplens errors print as one clear line, not a traceback."""
    try:
        app()
    except ShoplensError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        sys.exit(2)
