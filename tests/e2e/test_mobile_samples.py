"""The Swift and Kotlin samples use the shipped manifests' real names and sizes; so does the mobile README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shoplens.contract.manifest import load_manifest, verify_bundle

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples").rglob("*.swift")) + sorted((ROOT / "samples").rglob("*.kt"))
MARKED = re.compile(r'=\s*(?P<value>"[^"]*"|-?[\d.]+f?)\s*(?://\s*manifest:\s*(?P<ref>\S+)\s+(?P<path>\S+))')


def _lookup(data: object, path: str) -> object:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        data = data[int(part[1:-1])] if part.startswith("[") else data[part]  # type: ignore[index]
    return data


def _resolve(ref: str, path: str) -> object:
    bundle, _, file = ref.partition("/")
    manifest = load_manifest(ROOT / "mobile_assets" / bundle).model_dump(mode="json")
    if not file:
        return _lookup(manifest, path)
    (artifact,) = [a for a in manifest["artifacts"] if a["file"] == file]
    return _lookup(artifact, path)


def _value(text: str) -> object:
    if text.startswith('"'):
        return text.strip('"')
    return float(text.rstrip("f"))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_constants_match_manifests(sample: Path) -> None:
    checks = [m for m in MARKED.finditer(sample.read_text()) if m.group("ref")]
    assert len(checks) >= 8, f"{sample.name}: expected its model constants to be marked `// manifest:`"
    for m in checks:
        expected = _resolve(m.group("ref"), m.group("path"))
        got = _value(m.group("value"))
        if isinstance(got, float):
            assert float(expected) == pytest.approx(got), f"{sample.name}: {m.group(0)} but the manifest says {expected}"  # type: ignore[arg-type]
        else:
            assert got == expected, f"{sample.name}: {m.group(0)} but the manifest says {expected!r}"


def test_samples_point_at_shipped_publishable_artifacts() -> None:
    for sample in SAMPLES:
        for m in MARKED.finditer(sample.read_text()):
            if m.group("ref") and m.group("path") == "file":
                bundle, _, file = m.group("ref").partition("/")
                manifest = verify_bundle(ROOT / "mobile_assets" / bundle)
                (a,) = [a for a in manifest.artifacts if a.file == file]
                assert a.publishable, f"{sample.name} ships {file}, which did not pass its parity gate"


def test_i8_encoding_in_samples_matches_the_contract() -> None:
    """The samples re-implement encode_i8 (a phone has no Python): keep the rule identical."""
    swift = (ROOT / "samples/ios/ShoplensSearch.swift").read_text()
    kotlin = (ROOT / "samples/android/ShoplensSearch.kt").read_text()
    assert "* 127 / peak" in swift and ".toNearestOrEven" in swift and "min(127" in swift and "max(-127" in swift
    assert "* 127 / peak" in kotlin and "Math.rint" in kotlin and "coerceIn(-127.0, 127.0)" in kotlin
