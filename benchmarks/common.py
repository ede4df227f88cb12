"""Shared plumbing for benchmark scripts: print a table, write ``benchmarks/results/<name>.json``.

Every benchmark records the exact command that produced it and the machine it
ran on, so docs/benchmarks.md can quote nothing that was not measured.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def print_table(rows: list[dict[str, Any]], title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    if len(cols) > 8:  # wide rows read better transposed: one column per row
        table.add_column("metric")
        for i in range(len(rows)):
            table.add_column(f"#{i + 1}")
        for c in cols:
            table.add_row(c, *(_fmt(r.get(c)) for r in rows))
        Console().print(table)
        return
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in cols))
    Console().print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def command_line() -> str:
    """The command that is running, as a reader would retype it from the repository root."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def write_result(name: str, rows: list[dict[str, Any]], *, notes: list[str] | None = None, targets: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the result file docs/benchmarks.md is generated from; returns its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "command": command_line(),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "rows": rows,
        "targets": targets or [],
        "notes": notes or [],
        **(extra or {}),
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print_table(rows, title=name)
    print(f"wrote {path}")
    return path
