"""Shared plumbing for benchmark scripts: print a table, write ``benchmarks/results/<name>.json``.

Every benchmark records the exact command that produced it and the machine it
ran on, so docs/benchmarks.md can quote nothing that was not measured.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

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


def write_result(name: str, rows: list[dict[str, Any]], *, notes: list[str] | None = None, targets: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None,
                 print_columns: list[str] | None = None) -> Path:
    """Write the result file docs/benchmarks.md is generated from; returns its path.

    ``print_columns``: the columns the console table shows (default: all; the file has all of them).
    """
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
    print_table([{c: r.get(c) for c in print_columns} for r in rows] if print_columns else rows, title=name)
    print(f"wrote {path}")
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``shoplens serve`` in its own process group, so a kill takes Milvus Lite's child process too."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0) -> float:
        """Start and wait until /v1/ready answers 200; returns the seconds it took."""
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "shoplens", "serve", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=self.log.parent, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited during start-up; see {self.log}")
            try:
                if httpx.get(self.url + "/v1/ready", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"service not ready within {timeout_s:g} s; see {self.log}")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid
