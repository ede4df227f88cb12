"""The committed embedder bundle: manifest and sha256 match the files, the gate passed, and it still retrieves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shoplens.contract.manifest import ArtifactFormat, Precision, verify_bundle
from shoplens.contract.model_id import compute_model_id
from shoplens.converters.embedder.data import load_catalog
from shoplens.converters.embedder.evaluate import recall_at
from shoplens.converters.embedder.parity import artifact_embedder, embed_photos

BUNDLE = Path(__file__).resolve().parents[3] / "mobile_assets" / "resnet50v2-s3-256"


def test_bundle_manifest_and_hashes_match_files() -> None:
    m = verify_bundle(BUNDLE)  # raises on a missing file, a wrong size or sha256
    assert m.embedder is not None and m.embedder.dim == 256 and m.embedder.l2_in_graph
    assert m.embedder.model_id == compute_model_id(
        name=m.source.name, weights_sha256=m.source.weights_sha256, preprocessing=m.embedder.preprocessing, dim=256
    )
    # the shipped TFLite is weight-only int8 (int8 weights, float compute): the dynamic-range int8 of the
    # same checkpoint lost 1.01 points of photo->iconic R@1 (the target allows 1), static int8 failed the
    # gate (mean cos 0.98); see docs/embedder.md
    tfl = m.artifact(ArtifactFormat.TFLITE, Precision.W8)
    assert tfl.publishable and tfl.parity is not None and tfl.parity.passed
    assert tfl.parity.metrics["images"] >= 200 and tfl.parity.metrics["cos_mean"] >= 0.99
    assert tfl.size_bytes <= 12 * 1024 * 1024
    assert (BUNDLE / "parity.json").is_file() and (BUNDLE / "parity.md").is_file()
    for a in m.artifacts:
        assert a.publishable == bool(a.parity and a.parity.passed)


def test_shipped_tflite_retrieves_products(grocery_dir: Path) -> None:
    m = verify_bundle(BUNDLE)
    tfl = m.artifact(ArtifactFormat.TFLITE, Precision.W8)
    run = artifact_embedder(BUNDLE, tfl)  # the SDK's Embedder, from the manifest
    assert run is not None
    cat = load_catalog(grocery_dir)
    val = cat.split("val")[::6]  # 50 photos
    iconic = cat.iconic_samples()
    q, c = embed_photos(run, val), embed_photos(run, iconic)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=0.05)
    r = recall_at(q, [s.product for s in val], c, [s.product for s in iconic])
    assert r["r@1"] >= 0.5, r  # off-the-shelf MobileNetV1 reaches ~0.24 on the full val set
