"""The SDK's numpy letterbox + YOLO decode/NMS against ultralytics' own preprocessing and predictions."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from shoplens.sdk.images import load_rgb
from shoplens.sdk.preprocess import letterbox, letterbox_geometry, resize_bilinear
from shoplens.sdk.tensors import encode_pixels, prepare_input
from shoplens.sdk.yolo_decode import (
    batched_nms,
    box_iou,
    decode_nms_outputs,
    decode_yolo_raw,
    dequantize,
    unletterbox,
)


def _photos(coco8_dir: Path, grocery_dir: Path) -> list[Path]:
    coco = sorted((coco8_dir / "images").rglob("*.jpg"))
    grocery = sorted((grocery_dir / "val").rglob("*.jpg"))[::60][:4]
    return coco + grocery


# ---- pure numpy ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (333, 1000), (1000, 17), (640, 640), (101, 99)])
@pytest.mark.parametrize("target", [320, 640])
def test_letterbox_geometry_matches_ultralytics(shape: tuple[int, int], target: int) -> None:
    from shoplens.offline import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics.data.augment import LetterBox

    params = LetterBox((target, target)).get_params({"img": np.zeros((*shape, 3), np.uint8)})
    geo = letterbox_geometry(shape[0], shape[1], target, target)
    assert (geo.pad_x, geo.pad_y) == (params["left"], params["top"])
    assert (round(geo.gain_x * shape[1]), round(geo.gain_y * shape[0])) == tuple(params["new_unpad"])


def test_letterbox_pixels_match_ultralytics(coco8_dir: Path, grocery_dir: Path) -> None:
    """Same pad/geometry; the bilinear resize differs from OpenCV's fixed point by at most one grey level."""
    from shoplens.offline import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics.data.augment import LetterBox

    for p in _photos(coco8_dir, grocery_dir)[:6]:
        rgb = load_rgb(p)
        ours, _ = letterbox(rgb, 640, 640)
        ref = LetterBox((640, 640))(image=rgb)
        diff = np.abs(ours.astype(int) - ref.astype(int))
        assert ours.shape == ref.shape
        assert diff.max() <= 1, p.name
        assert (diff > 0).mean() < 0.2, p.name


@pytest.mark.parametrize("seed", range(4))
def test_resize_matches_opencv_growing_and_shrinking(seed: int) -> None:
    """Both orders of the separable resize (horizontal pass per source row when growing, on the
    picked rows when shrinking) stay within one grey level of OpenCV's INTER_LINEAR."""
    import cv2

    rng = np.random.default_rng(seed)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(2, 700, 2))
        new_h, new_w = (int(v) for v in rng.integers(1, 700, 2))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = cv2.GaussianBlur(img, (5, 5), 0)  # photo-like gradients, not only noise
        ours = resize_bilinear(img, new_h, new_w)
        ref = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        assert ours.shape == ref.shape == (new_h, new_w, 3)
        assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1, (h, w, new_h, new_w)


def test_pixel_table_is_the_per_pixel_formula() -> None:
    """The looked-up input equals scaling, mean/std and quantisation run on every pixel, for each
    layout, colour order and dtype a manifest can name."""
    from shoplens.contract.manifest import InputSpec

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    checked = 0
    for color, layout, dtype, quant, (mean, std) in itertools.product(
        ("RGB", "BGR"), ("NHWC", "NCHW"), ("float32", "uint8", "int8"), (None, {"scale": 0.0078, "zero_point": 3}),
        (([0.0] * 3, [1.0] * 3), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])),
    ):
        if quant is not None and dtype == "float32":
            continue
        spec = InputSpec.model_validate({
            "name": "x", "shape": [1, 24, 40, 3] if layout == "NHWC" else [1, 3, 24, 40], "layout": layout, "dtype": dtype,
            "color_order": color, "resize": "stretch", "scale": 1 / 255 if quant or dtype == "float32" else 1.0,
            "mean": mean, "std": std, "quantization": quant,
        })
        x = (img[..., ::-1] if color == "BGR" else img).astype(np.float32)
        value = (x * np.float32(spec.scale) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        if quant:
            lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
            value = np.clip(np.rint(value / quant["scale"] + quant["zero_point"]), lo, hi)
        elif dtype != "float32":
            lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
            value = np.clip(np.rint(value), lo, hi)
        expected = value.astype(dtype)
        expected = expected.transpose(2, 0, 1)[None] if layout == "NCHW" else expected[None]
        got = encode_pixels(img, spec)
        assert got.dtype == expected.dtype and got.shape == expected.shape and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected, err_msg=f"{color} {layout} {dtype} {quant} {mean}")
        checked += 1
    assert checked == 40


def test_unletterbox_inverts_the_letterbox() -> None:
    geo = letterbox_geometry(480, 640, 320, 320)
    photo_boxes = np.array([[10, 20, 300, 400], [0, 0, 640, 480]], np.float32)
    model_boxes = photo_boxes.copy()
    model_boxes[:, [0, 2]] = model_boxes[:, [0, 2]] * geo.gain_x + geo.pad_x
    model_boxes[:, [1, 3]] = model_boxes[:, [1, 3]] * geo.gain_y + geo.pad_y
    np.testing.assert_allclose(unletterbox(model_boxes, geo), photo_boxes, atol=1e-3)


def test_class_aware_nms() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    same = batched_nms(boxes, scores, np.array([0, 0, 0, 0]), 0.5)
    assert same.tolist() == [0, 3]
    other_class = batched_nms(boxes, scores, np.array([0, 0, 1, 0]), 0.5)
    assert other_class.tolist() == [0, 2, 3]


def _synthetic_raw(nc: int = 3) -> np.ndarray:
    """Two objects, each predicted by two overlapping anchors; one low-score anchor elsewhere."""
    raw = np.zeros((1, 4 + nc, 5), np.float32)
    raw[0, :4, 0] = [100, 100, 40, 40]
    raw[0, :4, 1] = [102, 101, 40, 42]
    raw[0, :4, 2] = [200, 150, 60, 30]
    raw[0, :4, 3] = [201, 150, 60, 30]
    raw[0, :4, 4] = [50, 50, 10, 10]
    raw[0, 4 + 1, 0], raw[0, 4 + 1, 1] = 0.9, 0.8
    raw[0, 4 + 2, 2], raw[0, 4 + 2, 3] = 0.7, 0.75
    raw[0, 4 + 0, 4] = 0.1
    return raw


def test_decode_pixels_normalised_and_quantised_agree() -> None:
    geo = letterbox_geometry(320, 320, 320, 320)
    raw = _synthetic_raw()
    pix = decode_yolo_raw(raw, geo, num_classes=3, boxes_normalized=False)
    assert pix.classes.tolist() == [1, 2]
    np.testing.assert_allclose(pix.scores, [0.9, 0.75])
    np.testing.assert_allclose(pix.boxes[0], [80, 80, 120, 120])

    norm = raw.copy()
    norm[0, :4] /= 320
    got = decode_yolo_raw(norm, geo, num_classes=3, boxes_normalized=True)
    np.testing.assert_allclose(got.boxes, pix.boxes, atol=1e-3)

    scale, zp = 1 / 255, -128
    q = np.clip(np.round(norm / scale + zp), -128, 127).astype(np.int8)
    np.testing.assert_allclose(dequantize(q, scale, zp), norm, atol=scale)
    gq = decode_yolo_raw(q, geo, num_classes=3, boxes_normalized=True, quantization=(scale, zp))
    assert gq.classes.tolist() == [1, 2]
    np.testing.assert_allclose(gq.boxes, pix.boxes, atol=2.0)
    with pytest.raises(ValueError, match="quantization scale"):
        decode_yolo_raw(q, geo, num_classes=3, boxes_normalized=True)
    with pytest.raises(ValueError, match="expected"):
        decode_yolo_raw(raw, geo, num_classes=80, boxes_normalized=False)


def test_decode_nms_outputs_threshold_and_mapping() -> None:
    geo = letterbox_geometry(240, 320, 320, 320)  # 40 px pad top and bottom
    boxes = np.array([[0.5, 0.5, 0.25, 0.25], [0.1, 0.1, 0.1, 0.1]], np.float32)
    scores = np.array([[0.1, 0.8], [0.2, 0.1]], np.float32)
    d = decode_nms_outputs(boxes, scores, geo, conf_threshold=0.25)
    assert d.classes.tolist() == [1]
    np.testing.assert_allclose(d.boxes[0], [120, 80, 200, 160], atol=1e-3)


# ---- against ultralytics' predictions ----------------------------------------------------


@pytest.fixture(scope="module")
def yolo(yolov8n_path: Path):
    from shoplens.converters.detector.reference import load_torch_detector

    return load_torch_detector(yolov8n_path)


def _predict(yolo, rgb: np.ndarray, imgsz: int):
    r = yolo.model.predict(np.ascontiguousarray(rgb[..., ::-1]), imgsz=imgsz, conf=0.25, iou=0.45, rect=False, verbose=False)[0]
    return r.boxes.xyxy.numpy(), r.boxes.conf.numpy(), r.boxes.cls.numpy().astype(int)


def _assert_same(d, ref, iou_min: float, score_tol: float, name: str) -> None:
    rb, rs, rc = ref
    assert len(d) == len(rb), f"{name}: {len(d)} vs ultralytics {len(rb)} detections"
    if not len(rb):
        return
    iou = box_iou(d.boxes, rb)
    j = iou.argmax(axis=1)
    assert iou.max(axis=1).min() >= iou_min, name
    assert (d.classes == rc[j]).all(), name
    assert np.abs(d.scores - rs[j]).max() <= score_tol, name


def test_decode_matches_ultralytics_predict_exactly_on_the_same_pixels(yolo, coco8_dir: Path, grocery_dir: Path) -> None:
    """Given ultralytics' own letterboxed pixels, our decode + NMS reproduces model.predict."""
    from ultralytics.data.augment import LetterBox

    from shoplens.converters.detector.reference import reference_input

    photos = _photos(coco8_dir, grocery_dir)
    total = 0
    for p in photos:
        rgb = load_rgb(p)
        lb = LetterBox((320, 320))(image=rgb)
        geo = letterbox_geometry(rgb.shape[0], rgb.shape[1], 320, 320)
        raw = yolo.raw(encode_pixels(lb, reference_input(320)))
        d = decode_yolo_raw(raw, geo, num_classes=80, boxes_normalized=False, conf_threshold=0.25, iou_threshold=0.45)
        _assert_same(d, _predict(yolo, rgb, 320), iou_min=0.999, score_tol=1e-4, name=p.name)
        total += len(d)
    assert total >= 12  # the photos really contain objects: the comparison is not vacuous


def test_sdk_pipeline_matches_ultralytics_predict(yolo, coco8_dir: Path, grocery_dir: Path) -> None:
    """The full SDK path (our letterbox, within one grey level of OpenCV) stays within a hair of predict."""
    from shoplens.converters.detector.reference import reference_input

    for p in _photos(coco8_dir, grocery_dir)[::2]:
        rgb = load_rgb(p)
        x, geo = prepare_input(rgb, reference_input(320))
        d = decode_yolo_raw(yolo.raw(x), geo, num_classes=80, boxes_normalized=False)
        _assert_same(d, _predict(yolo, rgb, 320), iou_min=0.95, score_tol=0.03, name=p.name)
