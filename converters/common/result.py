"""The outcome of one conversion, the same shape for the detector and the embedder."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoplens.contract.manifest import BundleManifest


@dataclass
class ConvertResult:
    """The bundle written, each gated artifact's parity result, and what was not gated.

    ``results`` holds the gate's per-artifact results (the detector's ``ArtifactResult``
    or the embedder's ``ParityResult``: both say ``passed``). A conversion never
    raises for a failed gate; callers read ``passed``.
    """

    manifest: BundleManifest
    bundle_dir: Path
    results: list[Any] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # requested target/precision pairs not offered
    pending: list[str] = field(default_factory=list)  # artifacts written without numeric parity
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


def tool_versions(packages: Iterable[str]) -> dict[str, str]:
    """Installed versions of ``packages`` (absent ones left out), recorded in the manifest."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
