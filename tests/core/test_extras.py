"""The extras keep their promises: cloud without torch/tensorflow, device without torch."""

from __future__ import annotations

import importlib.metadata as md
import re

import pytest

FORBIDDEN = {"cloud": {"torch", "tensorflow", "ultralytics"}, "device": {"torch", "tensorflow", "ultralytics"},
             "mediapipe": {"torch", "tensorflow", "ultralytics"}}


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0].lower().replace("_", "-")


def _closure(dist: str, extras: set[str]) -> set[str]:
    """Installed distributions pulled in by ``dist[extras]``, following installed metadata."""
    seen: set[str] = set()
    todo = [(dist, frozenset(extras))]
    while todo:
        name, want = todo.pop()
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for r in reqs:
            marker = r.split(";", 1)[1] if ";" in r else ""
            m = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            if m and m.group(1) not in want:
                continue
            if marker and not m and ("sys_platform == \"win32\"" in marker or "platform_system == \"Windows\"" in marker):
                continue
            n = _name(r)
            sub = set(re.findall(r"\[([^\]]+)\]", r.split(";")[0])[0].split(",")) if "[" in r.split(";")[0] else set()
            if n == "shoplens":
                todo.append((n, frozenset(sub)))
                continue
            if n not in seen:
                seen.add(n)
                todo.append((n, frozenset(sub)))
    return seen


@pytest.mark.parametrize("extra", ["cloud", "device", "mediapipe"])
def test_extra_has_no_heavy_ml_frameworks(extra: str) -> None:
    deps = _closure("shoplens", {extra})
    assert deps, "shoplens metadata not found: is the package installed?"
    bad = FORBIDDEN[extra] & deps
    assert not bad, f"shoplens[{extra}] pulls in {sorted(bad)}"


def test_convert_extra_has_the_converters() -> None:
    deps = _closure("shoplens", {"convert"})
    assert {"torch", "ultralytics", "coremltools", "litert-torch"} <= deps
    assert "tensorflow" not in _closure("shoplens", {"all"})
    assert "tensorflow" not in _closure("shoplens", {"dev"}), "mediapipe/playwright in dev must not bring tensorflow"


def test_device_extra_brings_its_runtime() -> None:
    assert {"ai-edge-litert", "pillow", "httpx"} <= _closure("shoplens", {"device"})


def test_contract_and_cli_import_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, shoplens.contract, shoplens.cli; bad = [m for m in ('torch', 'tensorflow', 'ultralytics') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
