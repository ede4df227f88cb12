"""The shipped bundles in MediaPipe Tasks (the real `mediapipe` runtime) and their TFLite metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason="MediaPipe Tasks is not installed (pip install -e '.[mediapipe]')")

from shoplens.contract.manifest import ArtifactFormat, load_manifest, verify_bundle  # noqa: E402
from shoplens.sdk.images import load_rgb  # noqa: E402
from shoplens.sdk.mediapipe_tasks import MediaPipeEmbedder, associated_files, metadata_json, write_metadata  # noqa: E402
from shoplens.sdk.runtime import DeviceRuntime, crop_with_margin  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "mobile_assets"
EMBEDDER = ASSETS / "resnet50v2-s3-256"
DETECTOR = ASSETS / "yolov8n"
N_PHOTOS = 20


def _val_photos(grocery_dir: Path, n: int = N_PHOTOS) -> list[Path]:
    lines = [ln.split(",")[0].strip() for ln in (grocery_dir / "val.txt").read_text().splitlines() if ln.strip()]
    step = len(lines) // n
    return [grocery_dir / p for p in lines[::step][:n]]


def _crop(rgb: np.ndarray, obj) -> np.ndarray:  # type: ignore[no-untyped-def]
    return rgb if obj.source == "whole_image" else np.ascontiguousarray(crop_with_margin(rgb, obj.box, 0.10))


@pytest.mark.slow
def test_mediapipe_image_embedder_matches_the_sdk(grocery_dir: Path) -> None:
    """MediaPipe's ImageEmbedder on the shipped embedder_w8.tflite vs the SDK (LiteRT) on the same crops
    of 20 real val photos. Given the crop resized the SDK's way (the documented MediaPipe path): the
    same vector and the same top-1 catalog product. Given the raw crop, MediaPipe's own resize (plain
    bilinear, no antialiasing) costs a little: cos mean >= 0.995 (0.998 measured on all 296 photos,
    min 0.992; top-1 96.6%: benchmarks/runtimes.py)."""
    rt = DeviceRuntime.from_bundle(ASSETS)
    photos = _val_photos(grocery_dir)
    # a small real catalog to rank against: the 81 products' iconic images, embedded by the SDK
    import csv

    products = list(csv.DictReader((grocery_dir / "classes.csv").open()))
    catalog = np.stack([rt.embedder.embed(load_rgb(grocery_dir / p["Iconic Image Path (str)"].lstrip("/"))) for p in products])
    direct, aligned, agree, agree_aligned = [], [], 0, 0
    with MediaPipeEmbedder(EMBEDDER, presize=False) as mp_direct, MediaPipeEmbedder(EMBEDDER, presize=True) as mp_aligned:
        assert mp_direct.model_id == rt.embedder.model_id
        for photo in photos:
            rgb = load_rgb(photo)
            obj = rt.process(rgb).objects[0]
            crop = _crop(rgb, obj)
            v_direct, v_aligned = mp_direct.embed(crop), mp_aligned.embed(crop)
            assert v_direct.shape == (256,) and abs(float(np.linalg.norm(v_direct)) - 1) < 1e-4
            direct.append(float(v_direct @ obj.vector))
            aligned.append(float(v_aligned @ obj.vector))
            agree += int(np.argmax(catalog @ v_direct) == np.argmax(catalog @ obj.vector))
            agree_aligned += int(np.argmax(catalog @ v_aligned) == np.argmax(catalog @ obj.vector))
    print(f"MediaPipe pre-resized: cos min {min(aligned):.6f}, top-1 {agree_aligned}/{len(photos)}; "
          f"its own resize: cos mean {np.mean(direct):.4f} min {min(direct):.4f}, top-1 {agree}/{len(photos)}")
    assert min(aligned) >= 0.9999 and agree_aligned == len(photos), aligned
    assert np.mean(direct) >= 0.995 and min(direct) >= 0.99, direct
    assert agree / len(photos) >= 0.9


def test_shipped_tflite_artifacts_carry_metadata() -> None:
    """Every shipped .tflite has TFLite metadata (MediaPipe, Android Studio ML Model Binding) that
    agrees with its manifest, and the manifest's sha256/size describe the file with it."""
    for bundle in (EMBEDDER, DETECTOR):
        manifest = verify_bundle(bundle)
        for a in manifest.artifacts:
            if a.format is not ArtifactFormat.TFLITE:
                continue
            md = metadata_json(bundle / a.file)
            assert md is not None, f"{a.file} has no TFLite metadata (python -m shoplens.sdk.mediapipe_tasks write-metadata {bundle})"
            assert md["name"] == manifest.name
            (sub,) = md["subgraph_metadata"]
            (inp,) = sub["input_tensor_metadata"]
            assert inp["content"]["content_properties"]["color_space"] == a.input.color_order.value
            norm = inp["process_units"][0]["options"]
            assert norm["mean"] == pytest.approx([m / a.input.scale for m in a.input.mean])
            assert norm["std"] == pytest.approx([s / a.input.scale for s in a.input.std])
            assert str(a.input.width) in inp["description"] and a.input.resize.value in inp["description"]
            if manifest.detector is not None:
                labels = associated_files(bundle / a.file)["labels.txt"].decode().splitlines()
                assert labels == manifest.detector.class_names
                assert str(manifest.detector.conf_threshold) in sub["output_tensor_metadata"][0]["description"]
            else:
                assert manifest.embedder is not None and manifest.embedder.model_id in md["description"]


def test_write_metadata_keeps_the_graph_and_is_idempotent(tmp_path: Path) -> None:
    """Rewriting the metadata of a copy from its manifest gives the same file, and the manifest still verifies."""
    import shutil

    bundle = tmp_path / "yolov8n"
    shutil.copytree(DETECTOR, bundle, ignore=shutil.ignore_patterns("*.mlpackage"))
    manifest = load_manifest(bundle)
    manifest.artifacts = [a for a in manifest.artifacts if a.format is ArtifactFormat.TFLITE]
    from shoplens.contract.manifest import save_manifest

    save_manifest(manifest, bundle)
    before = (bundle / "yolov8n_int8.tflite").read_bytes()
    write_metadata(bundle)
    after = (bundle / "yolov8n_int8.tflite").read_bytes()
    assert after == before, "metadata written from the same manifest must give the same file"
    verify_bundle(bundle)
    # the weights are inside the flatbuffer (MediaPipe's populator drops offset-addressed buffers)
    assert len(after) > 3_000_000
