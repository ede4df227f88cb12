"""The `shoplens` CLI: help everywhere, doctor truthful on this machine and failing when it should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from shoplens.cli import app

SHOPLENS = [sys.executable, "-m", "shoplens"]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SHOPLENS, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def _all_command_paths(cmd, prefix=()):
    yield prefix
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _all_command_paths(sub, (*prefix, name))


def test_every_command_has_help() -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    paths = list(_all_command_paths(get_command(app)))
    assert ("doctor",) in paths and ("manifest", "validate") in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_doctor_finds_shared_files(shared_dir: Path) -> None:
    res = _run("doctor", "--json", "--for", "core")
    checks = {(c["group"], c["item"]): c for c in json.loads(res.stdout)}
    assert checks[("weights", "yolov8n.pt")]["status"] == "ok"
    assert str(shared_dir / "weights" / "yolov8n.pt") in checks[("weights", "yolov8n.pt")]["detail"]
    assert checks[("datasets", "grocery_store")]["status"] == "ok"
    assert checks[("extras", "cloud")]["status"] == "ok"
    assert res.returncode == 0


def test_doctor_fails_when_required_missing(tmp_path: Path) -> None:
    # an unreachable Milvus server is required for --for cloud
    res = _run("doctor", "--for", "cloud", env={"SHOPLENS_MILVUS_URI": "http://127.0.0.1:9", "COLUMNS": "250"})
    assert res.returncode == 1, res.stdout
    assert "required check(s) failed" in res.stdout
    assert "start the Milvus server" in res.stdout


def test_doctor_rejects_unknown_profile() -> None:
    res = _run("doctor", "--for", "everything")
    assert res.returncode == 2 and "unknown profile" in (res.stdout + res.stderr)


def test_manifest_validate_cli(tmp_path: Path) -> None:
    from test_manifest_helpers import write_bundle

    write_bundle(tmp_path)
    ok = _run("manifest", "validate", str(tmp_path))
    assert ok.returncode == 0 and "valid" in ok.stdout
    (tmp_path / "model.tflite").write_bytes(b"tflite-bytez")
    bad = _run("manifest", "validate", str(tmp_path))
    assert bad.returncode == 2 and "sha256" in bad.stdout and "[invalid_manifest]" in bad.stdout


def test_version() -> None:
    res = _run("--version")
    assert res.returncode == 0 and res.stdout.startswith("shoplens ")
