"""DeviceRuntime with real LiteRT interpreters and real weights, driven only by manifests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shoplens.contract.errors import ManifestError
from shoplens.contract.manifest import ObjectChoice, load_manifest
from shoplens.sdk.images import ImageError, load_rgb
from shoplens.sdk.runtime import DeviceRuntime, Embedder, FlowOptions, crop_with_margin



def _photos(grocery_dir: Path, n: int) -> list[Path]:
    lines = (grocery_dir / "val.txt").read_text().splitlines()[:n]
    return [grocery_dir / line.split(",")[0].strip() for line in lines]


def test_wrapped_manifest_reads_the_model(mobilenet_bundle: Path) -> None:
    m = load_manifest(mobilenet_bundle)
    a = m.artifacts[0]
    assert m.embedder.dim == 1024 and a.input.shape == [1, 224, 224, 3] and a.input.dtype.value == "uint8"
    assert a.outputs[0].quantization is not None and a.outputs[0].dtype.value == "uint8"
    assert m.embedder.model_id.startswith("mobilenet-v1-imagenet-1024d-")


def test_embedder_gives_unit_vectors_that_separate_products(mobilenet_bundle: Path, grocery_dir: Path) -> None:
    emb = Embedder(mobilenet_bundle)
    photos = _photos(grocery_dir, 40)
    vecs = np.stack([emb.embed(load_rgb(p)) for p in photos])
    assert vecs.shape == (40, 1024) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    # the same photo twice: identical; different photos: not all identical (a real, non-constant model)
    again = emb.embed(load_rgb(photos[0]))
    assert float(again @ vecs[0]) > 0.99999
    sims = vecs @ vecs.T
    assert sims[np.triu_indices(40, 1)].min() < 0.9


def test_runtime_flow_with_caller_box_and_fallback(mobilenet_bundle: Path, grocery_dir: Path) -> None:
    rt = DeviceRuntime.from_bundle(embedder=mobilenet_bundle, options=FlowOptions(encoding="f16"))
    photo = _photos(grocery_dir, 1)[0]
    whole = rt.process(photo)
    assert [o.source for o in whole.objects] == ["whole_image"]
    w, h = whole.image_size
    tapped = rt.process(photo, box=(w * 0.25, h * 0.25, w * 0.5, h * 0.5))
    assert tapped.objects[0].source == "caller_box"
    assert float(tapped.objects[0].vector @ whole.objects[0].vector) < 0.9999
    assert set(tapped.timings_ms) >= {"decode", "crop", "embed", "encode"}
    assert tapped.payload_bytes == 2732  # base64 of 1024 f16 components: the only bytes that leave the phone


def test_corrupt_and_missing_images(tmp_path: Path, grocery_dir: Path) -> None:
    good = _photos(grocery_dir, 1)[0].read_bytes()
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_rgb(good[: len(good) // 3])
    with pytest.raises(ImageError, match="not a recognised image"):
        load_rgb(b"definitely not an image")
    with pytest.raises(ImageError, match="not found"):
        load_rgb(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="empty"):
        load_rgb(b"")
    buf = io.BytesIO()
    Image.new("L", (20000, 2500)).save(buf, format="PNG")  # 50 MP of zeros: a few KB compressed
    with pytest.raises(ImageError, match="pixels"):
        load_rgb(buf.getvalue())
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    with pytest.raises(ImageError, match="outside"):
        load_rgb(buf.getvalue())


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert load_rgb(buf.getvalue()).shape == (40, 20, 3)


def test_crop_margin_is_clipped_to_the_photo() -> None:
    rgb = np.zeros((100, 200, 3), np.uint8)
    assert crop_with_margin(rgb, (0, 0, 50, 50), 0.1).shape == (55, 55, 3)
    with pytest.raises(ValueError, match="empty"):
        crop_with_margin(rgb, (300, 300, 310, 310), 0.1)


def test_wrong_bundles_are_refused(mobilenet_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest"):
        Embedder(tmp_path)
    with pytest.raises(ManifestError, match="no coreml"):
        from shoplens.contract.manifest import load_manifest as lm

        lm(mobilenet_bundle).artifact("coreml")


def test_choose_objects_ranks_by_score_times_area_and_skips_people() -> None:
    from shoplens.sdk.runtime import choose_objects
    from shoplens.sdk.yolo_decode import Detections

    boxes = np.array([[0, 0, 50, 50], [0, 0, 90, 90], [0, 0, 100, 100], [0, 0, 5, 5]], np.float32)
    dets = Detections(boxes, np.array([0.9, 0.5, 0.99, 0.9], np.float32), np.array([1, 2, 0, 3]))
    names = ["person", "apple", "orange", "bottle"]
    nested = {"max_overlap": 1.0}  # these boxes lie inside each other: the overlap rule is tested below
    assert choose_objects(dets, 100 * 100, ObjectChoice(max_objects=3, min_box_fraction=0.01, **nested), names) == [1, 0]
    assert choose_objects(dets, 100 * 100, ObjectChoice(max_objects=3, min_box_fraction=0.5, **nested), names) == [1]
    assert choose_objects(dets, 100 * 100, ObjectChoice(max_objects=3, min_box_fraction=0.0, ignore_labels=[], **nested), names) == [2, 1, 0]


def test_choose_objects_skips_boxes_that_overlap_a_kept_one() -> None:
    """A part inside a kept box (small IoU, overlap 1 of the smaller box) and a second label on the
    same object give up their slots to other products; boxes apart, or overlapping by at most
    max_overlap of the smaller box, are kept; a skipped box frees its slot for the next one."""
    from shoplens.sdk.runtime import choose_objects
    from shoplens.sdk.yolo_decode import Detections, box_overlap

    boxes = np.array([
        [0, 0, 60, 60],      # 0: a product, the largest
        [10, 10, 20, 20],    # 1: a part inside 0 (IoU 0.03, overlap 1)
        [0, 0, 60, 59],      # 2: product 0 again under another label
        [55, 0, 100, 40],    # 3: another product, touching 0: 5x40 of its 45x40 (overlap 0.11)
        [70, 60, 100, 100],  # 4: a product apart
        [0, 70, 30, 100],    # 5: a product apart
    ], np.float32)
    scores = np.array([0.9, 0.9, 0.8, 0.9, 0.9, 0.9], np.float32)
    dets = Detections(boxes, scores, np.array([1, 1, 2, 1, 1, 1]))
    names = ["person", "apple", "orange"]
    assert box_overlap(boxes[:1], boxes[1:2])[0, 0] == 1.0
    assert box_overlap(boxes[3:4], boxes[:1])[0, 0] == pytest.approx(5 * 40 / (45 * 40))
    rule = ObjectChoice(max_objects=3, min_box_fraction=0.0, max_overlap=0.1)
    assert choose_objects(dets, 100 * 100, rule, names) == [0, 4, 5]  # 2 (same object), 3 (0.11 on 0) and 1 (inside 0) skipped
    assert choose_objects(dets, 100 * 100, rule.model_copy(update={"max_overlap": 0.12}), names) == [0, 3, 4]  # 3 ranked before 4 by area
    assert choose_objects(dets, 100 * 100, rule.model_copy(update={"max_overlap": 0.12, "max_objects": 5}), names) == [0, 3, 4, 5]
    assert choose_objects(dets, 100 * 100, rule.model_copy(update={"max_overlap": 1.0, "max_objects": 6}), names) == [0, 2, 3, 4, 5, 1]
    assert box_overlap(np.zeros((1, 4)), boxes[:1])[0, 0] == 0.0  # a box of no area overlaps nothing


@pytest.mark.slow
def test_shipped_bundles_run_the_whole_flow(coco8_dir: Path, grocery_dir: Path) -> None:
    """mobile_assets/ as a phone gets it: the detector finds real objects, the embedder gives the bundle's model id."""
    root = Path(__file__).resolve().parents[2] / "mobile_assets"
    rt = DeviceRuntime.from_bundle(root, options=FlowOptions(max_objects=5, min_box_fraction=0.0, ignore_labels=(), search_whole_photo=False, max_overlap=1.0))
    assert rt.detector is not None and rt.embedder.dim == 256
    photo = coco8_dir / "images" / "val" / "000000000036.jpg"  # a person with an umbrella
    res = rt.process(photo)
    labels = {o.label for o in res.objects}
    assert {"person", "umbrella"} <= labels, labels
    w, h = res.image_size
    for o in res.objects:
        x1, y1, x2, y2 = o.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and o.score > load_manifest(root / "yolov8n").detector.conf_threshold
        assert abs(float(np.linalg.norm(o.vector)) - 1) < 1e-5
    assert res.model_id == load_manifest(root / "resnet50v2-s3-256").embedder.model_id
    assert res.payload_bytes == 344 * len(res.objects)


def test_resolve_bundles(mobilenet_bundle: Path, tmp_path: Path) -> None:
    from shoplens.sdk.runtime import resolve_bundles

    root = Path(__file__).resolve().parents[2] / "mobile_assets"
    emb, det = resolve_bundles(root)
    assert emb.name == "resnet50v2-s3-256" and det.name == "yolov8n"
    assert resolve_bundles(root, embedder=mobilenet_bundle) == (mobilenet_bundle, det)  # explicit wins
    assert resolve_bundles(root, with_detector=False)[1] is None
    assert resolve_bundles(tmp_path, embedder_required=False) == (None, None)  # the demo's fallback case
    with pytest.raises(ManifestError, match="exactly one embedder bundle"):
        resolve_bundles(tmp_path)
    (tmp_path / "a").symlink_to(mobilenet_bundle)
    (tmp_path / "b").symlink_to(mobilenet_bundle)
    with pytest.raises(ManifestError, match="found 2"):
        resolve_bundles(tmp_path)
    with pytest.raises(ManifestError, match="no embedder bundle given"):
        resolve_bundles(None)
