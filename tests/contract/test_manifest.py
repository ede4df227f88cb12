"""Bundle manifest: validation, model id binding, file verification, JSON Schema drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoplens.contract.errors import ManifestError
from shoplens.contract.manifest import (
    SCHEMA_PATH,
    ArtifactManifest,
    BundleManifest,
    artifact_sha256,
    artifact_size,
    load_manifest,
    manifest_json_schema,
    save_manifest,
    verify_bundle,
)
from shoplens.contract.model_id import compute_model_id, is_valid_model_id, model_id_dim, sha256_file

SHA = "ab" * 32
PREP = {"size": 224, "resize": "stretch", "color": "RGB", "normalization": "imagenet-in-graph"}


def embedder_manifest(tmp: Path, dim: int = 256) -> BundleManifest:
    f = tmp / "model.tflite"
    f.write_bytes(b"tflite-bytes")
    mid = compute_model_id(name="resnet-test", weights_sha256=SHA, preprocessing=PREP, dim=dim)
    return BundleManifest(
        name="resnet-test",
        task="embedder",
        source={"name": "resnet-test", "weights": "ckpt.pt", "weights_sha256": SHA},
        embedder={"dim": dim, "l2_in_graph": True, "preprocessing": PREP, "model_id": mid},
        artifacts=[
            ArtifactManifest(
                file="model.tflite",
                format="tflite",
                precision="int8",
                sha256=sha256_file(f),
                size_bytes=f.stat().st_size,
                input={"name": "image", "shape": [1, 224, 224, 3], "layout": "NHWC", "dtype": "uint8", "resize": "stretch"},
                outputs=[{"name": "embedding", "shape": [1, dim], "dtype": "float32", "role": "embedding"}],
            )
        ],
    )


def test_round_trip_and_verify(tmp_path: Path) -> None:
    m = embedder_manifest(tmp_path)
    save_manifest(m, tmp_path)
    loaded = verify_bundle(tmp_path)
    assert loaded.embedder.model_id == m.embedder.model_id
    assert loaded.artifact("tflite").input.height == 224
    assert json.loads((tmp_path / "manifest.json").read_text())["schema_version"] == 1


def test_tampered_file_is_detected(tmp_path: Path) -> None:
    save_manifest(embedder_manifest(tmp_path), tmp_path)
    (tmp_path / "model.tflite").write_bytes(b"tflite-bytez")
    with pytest.raises(ManifestError, match="sha256"):
        verify_bundle(tmp_path)
    (tmp_path / "model.tflite").unlink()
    with pytest.raises(ManifestError, match="missing"):
        verify_bundle(tmp_path)


def test_model_id_must_match_source(tmp_path: Path) -> None:
    data = embedder_manifest(tmp_path).model_dump(mode="json")
    data["source"]["weights_sha256"] = "cd" * 32
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="does not match its source"):
        load_manifest(tmp_path)


def test_embedding_dim_must_match_output(tmp_path: Path) -> None:
    data = embedder_manifest(tmp_path).model_dump(mode="json")
    data["artifacts"][0]["outputs"][0]["shape"] = [1, 128]
    with pytest.raises(ValueError, match="128 dims"):
        BundleManifest.model_validate(data)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("source"), "source"),
        (lambda d: d.update(task="classifier"), "task"),
        (lambda d: d.update(detector={"class_names": ["a"], "boxes_normalized": True}), "no 'detector' section"),
        (lambda d: d["artifacts"][0].update(file="../escape.tflite"), "relative"),
        (lambda d: d["artifacts"][0]["input"].update(shape=[1, 224, 224, 4]), "3 colour channels"),
        (lambda d: d["artifacts"][0].update(sha256="xyz"), "sha256"),
        (lambda d: d["artifacts"][0].update(unknown_field=1), "unknown_field"),
        (lambda d: d.update(schema_version=2), "schema_version"),
    ],
)
def test_invalid_manifests_are_rejected_clearly(tmp_path: Path, mutate, message: str) -> None:
    data = embedder_manifest(tmp_path).model_dump(mode="json")
    mutate(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        load_manifest(tmp_path)


def test_missing_and_corrupt_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not readable JSON"):
        load_manifest(tmp_path)


def test_artifact_selection(tmp_path: Path) -> None:
    m = embedder_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no coreml/\\* artifact"):
        m.artifact("coreml")
    with pytest.raises(ManifestError, match="no tflite/int8 artifact"):
        m.artifact("tflite", "int8", publishable_only=True)
    a = m.artifacts[0].model_copy(update={"publishable": True})
    m.upsert_artifact(a)
    assert len(m.artifacts) == 1 and m.artifact("tflite").publishable


def test_directory_artifacts_hash_contents(tmp_path: Path) -> None:
    pkg = tmp_path / "m.mlpackage" / "Data"
    pkg.mkdir(parents=True)
    (pkg / "weights.bin").write_bytes(b"\x00" * 10)
    (pkg.parent / "Manifest.json").write_text("{}")
    h1 = artifact_sha256(tmp_path / "m.mlpackage")
    assert artifact_size(tmp_path / "m.mlpackage") == 12
    (pkg / "weights.bin").write_bytes(b"\x00" * 9 + b"\x01")
    assert artifact_sha256(tmp_path / "m.mlpackage") != h1


def test_model_id_properties() -> None:
    a = compute_model_id(name="ResNet 50/V2", weights_sha256=SHA, preprocessing=PREP, dim=256)
    assert is_valid_model_id(a) and model_id_dim(a) == 256 and a.startswith("resnet-50-v2-256d-")
    assert a == compute_model_id(name="ResNet 50/V2", weights_sha256=SHA, preprocessing=dict(reversed(PREP.items())), dim=256)
    assert a != compute_model_id(name="ResNet 50/V2", weights_sha256=SHA, preprocessing={**PREP, "size": 160}, dim=256)
    assert a != compute_model_id(name="ResNet 50/V2", weights_sha256="cd" * 32, preprocessing=PREP, dim=256)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        compute_model_id(name="x", weights_sha256="abc", preprocessing={}, dim=4)
    assert not is_valid_model_id("resnet-256d-XYZ")


def test_committed_json_schema_is_current() -> None:
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed == json.loads(json.dumps(manifest_json_schema(), sort_keys=True)), (
        "manifest.schema.json is stale: run `shoplens manifest schema --out shoplens/contract/manifest.schema.json`"
    )


def test_every_committed_bundle_verifies() -> None:
    root = Path(__file__).resolve().parents[2] / "mobile_assets"
    for manifest in root.glob("*/manifest.json"):
        verify_bundle(manifest.parent)
