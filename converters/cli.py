"""CLI wiring for the converters: ``shoplens convert detector|embedder`` and ``shoplens embedder ...``.

The commands live beside their code (detector/cli.py, embedder/cli.py); this
module only mounts them, so the two converters never edit the same file.
"""

from __future__ import annotations

import importlib
import importlib.util

import typer

convert_app = typer.Typer(help="Convert a model into an on-device bundle (CoreML / TFLite) with a parity report.", no_args_is_help=True)

#: modules that each define ``register(convert_app, root_app)``
_COMMAND_MODULES = ["shoplens.converters.detector.cli", "shoplens.converters.embedder.cli"]


def register(app: typer.Typer) -> None:
    for name in _COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(convert_app, app)
    app.add_typer(convert_app, name="convert")
