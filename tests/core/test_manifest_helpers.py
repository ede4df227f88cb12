"""Helper for tests that need a small valid bundle on disk (not a test module itself)."""

from __future__ import annotations

from pathlib import Path

import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))
from test_manifest import embedder_manifest  # noqa: E402

from shoplens.contract.manifest import save_manifest  # noqa: E402


def write_bundle(path: Path) -> Path:
    return save_manifest(embedder_manifest(path), path)
