"""Detection agreement and accuracy metrics in numpy: the numbers the parity gate is built on.

Two questions, two metrics. *Does the artifact compute what PyTorch computes?*
-> ``Agreement``: the share of the reference's detections that the artifact
reproduces and of the artifact's that the reference has (same class, IoU >= 0.5,
greedy one-to-one by score, with a small score tolerance at the threshold), plus
the score error on matched pairs. *Did conversion cost accuracy?* -> ``map50``:
COCO-style AP at IoU 0.5 (101-point interpolation, as ultralytics/pycocotools)
against ground-truth labels, averaged over classes present in the labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shoplens.sdk.yolo_decode import Detections, box_iou


def _greedy_pairs(ref: Detections, cand: Detections, iou_threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one matches (ref index, cand index, IoU): highest reference score first, best same-class IoU."""
    if not len(ref) or not len(cand):
        return []
    iou = box_iou(ref.boxes, cand.boxes)
    iou[ref.classes[:, None] != cand.classes[None, :]] = 0.0
    used = np.zeros(len(cand), bool)
    pairs = []
    for i in np.argsort(-ref.scores, kind="stable"):
        row = np.where(used, -1.0, iou[i])
        j = int(row.argmax())
        if row[j] >= iou_threshold:
            used[j] = True
            pairs.append((int(i), j, float(row[j])))
    return pairs


@dataclass
class Agreement:
    """Running totals of reference vs candidate detections over many images.

    Both sides are decoded at the bundle's confidence threshold. A box scored 0.26
    by PyTorch and 0.24 by an int8 artifact is the same detection with a slightly
    different score, not a lost object, yet a strict comparison at 0.25 counts it
    as a miss (measured: even weight-only int8, whose arithmetic is float, "lost"
    8% of the reference's boxes that way, all below 0.5). So the gated rates are
    *tolerant*: a detection counts as reproduced when the other side has it at
    ``threshold - score_tolerance`` or above (pass ``ref_low``/``cand_low``); the
    score difference itself is measured and gated separately (``score_mae``), and
    the strict rates are reported beside them.
    """

    iou_threshold: float = 0.5
    ref_total: int = 0
    cand_total: int = 0
    matched: int = 0  # reference detections the candidate reproduces (tolerant)
    matched_strict: int = 0
    cand_matched: int = 0  # candidate detections the reference has (tolerant)
    score_errors: list[float] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)
    confident_total: int = 0
    confident_matched: int = 0
    confident_score: float = 0.5  # "the model is sure": misses there matter more than near-threshold ones

    def add(self, ref: Detections, cand: Detections, ref_low: Detections | None = None, cand_low: Detections | None = None) -> None:
        """``ref``/``cand`` at the threshold; ``*_low`` the same outputs decoded at threshold - tolerance."""
        self.ref_total += len(ref)
        self.cand_total += len(cand)
        self.confident_total += int((ref.scores >= self.confident_score).sum())
        self.matched_strict += len(_greedy_pairs(ref, cand, self.iou_threshold))
        low = cand_low if cand_low is not None else cand
        for i, j, iou in _greedy_pairs(ref, low, self.iou_threshold):
            self.matched += 1
            self.confident_matched += int(ref.scores[i] >= self.confident_score)
            self.score_errors.append(abs(float(ref.scores[i]) - float(low.scores[j])))
            self.ious.append(iou)
        self.cand_matched += len(_greedy_pairs(cand, ref_low if ref_low is not None else ref, self.iou_threshold))

    def metrics(self) -> dict[str, float]:
        """match_rate (recall of the reference, tolerant; ``_strict``: both at the threshold;
        ``_confident``: of its detections scored >= 0.5), precision_vs_ref, score errors, mean matched IoU."""
        err = np.asarray(self.score_errors) if self.score_errors else np.zeros(1)
        return {
            "match_rate": self.matched / self.ref_total if self.ref_total else 1.0,
            "match_rate_strict": self.matched_strict / self.ref_total if self.ref_total else 1.0,
            "match_rate_confident": self.confident_matched / self.confident_total if self.confident_total else 1.0,
            "precision_vs_ref": self.cand_matched / self.cand_total if self.cand_total else 1.0,
            "precision_vs_ref_strict": self.matched_strict / self.cand_total if self.cand_total else 1.0,
            "score_mae": float(err.mean()),
            "score_max_err": float(err.max()),
            "mean_iou": float(np.mean(self.ious)) if self.ious else 1.0,
            "ref_detections": float(self.ref_total),
            "candidate_detections": float(self.cand_total),
        }


def load_yolo_labels(label_file: Path, img_h: int, img_w: int) -> tuple[np.ndarray, np.ndarray]:
    """YOLO txt labels (class cx cy w h, normalised) -> xyxy pixel boxes [K, 4] and classes [K]."""
    if not label_file.is_file():
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    rows = [ln.split() for ln in label_file.read_text().splitlines() if ln.strip()]
    if not rows:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    a = np.asarray([[float(v) for v in r[:5]] for r in rows], np.float64)
    cx, cy, w, h = a[:, 1] * img_w, a[:, 2] * img_h, a[:, 3] * img_w, a[:, 4] * img_h
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    return boxes, a[:, 0].astype(np.int64)


def label_file_for(image: Path) -> Path:
    """The YOLO convention: .../images/<split>/x.jpg -> .../labels/<split>/x.txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


@dataclass
class MAP50:
    """Accumulates detections and ground truth; ``value()`` is mean AP at IoU 0.5 over labelled classes."""

    tp: list[np.ndarray] = field(default_factory=list)
    conf: list[np.ndarray] = field(default_factory=list)
    pred_cls: list[np.ndarray] = field(default_factory=list)
    target_cls: list[np.ndarray] = field(default_factory=list)

    def add(self, det: Detections, gt_boxes: np.ndarray, gt_classes: np.ndarray) -> None:
        """Match predictions to ground truth at IoU >= 0.5 (same class, each GT once, by highest IoU)."""
        tp = np.zeros(len(det), bool)
        if len(det) and len(gt_classes):
            iou = box_iou(gt_boxes, det.boxes)
            iou[gt_classes[:, None] != det.classes[None, :]] = 0.0
            gi, di = np.nonzero(iou >= 0.5)
            if gi.size:
                order = np.argsort(-iou[gi, di], kind="stable")
                gi, di = gi[order], di[order]
                _, first_d = np.unique(di, return_index=True)
                gi, di = gi[first_d], di[first_d]
                order = np.argsort(-iou[gi, di], kind="stable")
                gi, di = gi[order], di[order]
                _, first_g = np.unique(gi, return_index=True)
                tp[di[first_g]] = True
        self.tp.append(tp)
        self.conf.append(det.scores.astype(np.float64))
        self.pred_cls.append(det.classes)
        self.target_cls.append(gt_classes)

    def value(self) -> float:
        if not self.target_cls:
            return float("nan")
        tp = np.concatenate(self.tp) if self.tp else np.zeros(0, bool)
        conf = np.concatenate(self.conf) if self.conf else np.zeros(0)
        pcls = np.concatenate(self.pred_cls) if self.pred_cls else np.zeros(0, np.int64)
        tcls = np.concatenate(self.target_cls)
        if tcls.size == 0:
            return float("nan")
        order = np.argsort(-conf, kind="stable")
        tp, pcls = tp[order], pcls[order]
        aps = []
        for c in np.unique(tcls):
            sel = pcls == c
            n_gt = int((tcls == c).sum())
            if not sel.any():
                aps.append(0.0)
                continue
            tpc = np.cumsum(tp[sel])
            fpc = np.cumsum(~tp[sel])
            aps.append(average_precision(tpc / n_gt, tpc / (tpc + fpc)))
        return float(np.mean(aps))


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the interpolated precision-recall curve, 101-point (COCO) sampling.

    Precision drops to 0 right after the highest recall reached (as ultralytics
    8.4 does), so recall the detector never reaches earns no area.
    """
    mrec = np.concatenate(([0.0], recall, [recall[-1] if len(recall) else 1.0], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(np.trapezoid(np.interp(x, mrec, mpre), x))
