"""The gate's numpy metrics: agreement matching and mAP50 (cross-checked with ultralytics' AP code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shoplens.converters.detector.metrics import MAP50, Agreement, average_precision, label_file_for, load_yolo_labels
from shoplens.converters.detector.parity import check_thresholds, source_name, thresholds_for
from shoplens.sdk.yolo_decode import Detections


def _det(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(classes, np.int64))


def test_agreement_counts_same_class_overlaps_once() -> None:
    ref = _det([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [1, 2, 3])
    cand = _det([[0, 0, 10, 11], [1, 1, 10, 10], [20, 20, 30, 30]], [0.85, 0.5, 0.6], [1, 1, 5])
    a = Agreement()
    a.add(ref, cand)
    m = a.metrics()
    assert m["match_rate"] == pytest.approx(1 / 3)  # box 2 has the wrong class, box 3 is missing
    assert m["precision_vs_ref"] == pytest.approx(1 / 3)  # the duplicate does not match twice
    assert m["score_mae"] == pytest.approx(0.05, abs=1e-6)
    a.add(ref, ref)
    assert a.metrics()["match_rate"] == pytest.approx(4 / 6)


def test_map50_perfect_and_imperfect() -> None:
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
    gt_cls = np.array([0, 1])
    m = MAP50()
    m.add(_det(gt_boxes.tolist(), [0.9, 0.8], [0, 1]), gt_boxes, gt_cls)
    assert m.value() == pytest.approx(1.0, abs=0.006)  # 101-point COCO interpolation: 0.995, as ultralytics
    m2 = MAP50()
    m2.add(_det([[0, 0, 10, 10], [100, 100, 110, 110]], [0.9, 0.95], [0, 0]), gt_boxes, gt_cls)
    assert m2.value() < 0.5  # class 1 missed (AP 0), class 0 found after a higher-scored false positive


def test_average_precision_matches_ultralytics() -> None:
    from shoplens.offline import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics.utils.metrics import ap_per_class

    rng = np.random.default_rng(0)
    n = 200
    tp = rng.random(n) < 0.6
    conf = rng.random(n)
    pred_cls = rng.integers(0, 4, n)
    target_cls = rng.integers(0, 4, 150)
    theirs = ap_per_class(np.repeat(tp[:, None], 10, axis=1), conf, pred_cls, target_cls)[5][:, 0].mean()
    m = MAP50(tp=[tp], conf=[conf], pred_cls=[pred_cls], target_cls=[target_cls])
    assert m.value() == pytest.approx(theirs, abs=2e-3)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0, abs=0.006)


def test_yolo_labels(tmp_path: Path) -> None:
    img = tmp_path / "ds" / "images" / "val" / "a.jpg"
    lbl = label_file_for(img)
    assert lbl == tmp_path / "ds" / "labels" / "val" / "a.txt"
    lbl.parent.mkdir(parents=True)
    lbl.write_text("3 0.5 0.5 0.2 0.4\n")
    boxes, cls = load_yolo_labels(lbl, 100, 200)
    np.testing.assert_allclose(boxes, [[80, 30, 120, 70]])
    assert cls.tolist() == [3]
    assert load_yolo_labels(tmp_path / "missing.txt", 10, 10)[0].shape == (0, 4)


def test_thresholds_and_overrides() -> None:
    t = thresholds_for("int8", {"match_rate_min": 0.5})
    assert t["match_rate_min"] == 0.5
    with pytest.raises(ValueError, match="unknown parity threshold"):
        thresholds_for("fp32", {"bogus_min": 1})
    fails = check_thresholds({"match_rate": 0.4, "score_mae": 0.01, "map50_drop": float("nan")}, {"match_rate_min": 0.5, "score_mae_max": 0.02, "map50_drop_max": 0.01})
    assert fails == ["match_rate 0.4000 < 0.5", "map50_drop was not measured"]
    assert source_name(Path("/x/coco8/images")) == "coco8"
    assert source_name(Path("/x/grocery_store/dataset/val")) == "grocery_store"


def test_confident_match_rate_separates_near_threshold_misses() -> None:
    ref = _det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.26], [1, 1])
    a = Agreement()
    a.add(ref, _det([[0, 0, 10, 10]], [0.88], [1]))  # only the near-threshold box is missing
    m = a.metrics()
    assert m["match_rate"] == pytest.approx(0.5) and m["match_rate_confident"] == pytest.approx(1.0)


def test_score_tolerance_separates_threshold_flicker_from_lost_boxes() -> None:
    ref = _det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.26], [1, 1])
    cand_low = _det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.88, 0.24], [1, 1])  # decoded at 0.25 - 0.05
    cand = _det([[0, 0, 10, 10]], [0.88], [1])  # the same outputs at 0.25: box 2 slipped under the threshold
    a = Agreement()
    a.add(ref, cand, ref_low=ref, cand_low=cand_low)
    m = a.metrics()
    assert m["match_rate"] == pytest.approx(1.0) and m["match_rate_strict"] == pytest.approx(0.5)
    assert m["score_mae"] == pytest.approx(0.02, abs=1e-6)  # the flicker's score error is still measured
    assert m["precision_vs_ref"] == pytest.approx(1.0)

    lost = Agreement()  # a box the artifact does not have at any score near the threshold is still a miss
    lost.add(ref, cand, ref_low=ref, cand_low=cand)
    assert lost.metrics()["match_rate"] == pytest.approx(0.5)

    extra = Agreement()  # a box only the artifact sees counts against precision_vs_ref
    spurious = _det([[0, 0, 10, 10], [50, 50, 60, 60]], [0.88, 0.4], [1, 2])
    extra.add(ref, spurious, ref_low=ref, cand_low=spurious)
    assert extra.metrics()["precision_vs_ref"] == pytest.approx(0.5)
