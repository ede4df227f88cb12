"""The detector parity gate: run each artifact on real photos and compare it with PyTorch fp32.

Every artifact is judged through the device SDK: a TFLite artifact runs in
``shoplens.sdk.runtime.Detector`` configured by the bundle's manifest, and each
input is prepared from the manifest's input spec by the SDK's encoder, so a pass
means the phone's full path agrees (a wrong spec in the manifest fails the gate),
not just a tensor. Two views per artifact:

- agreement with the PyTorch fp32 model at the bundle's default thresholds
  (match rate at IoU >= 0.5 with the same class, score error), on coco8 and
  Grocery Store photos;
- mAP50 on the coco8 labels (decoded at ultralytics' val thresholds, conf
  0.001 / IoU 0.7) for the artifact and the reference: the drop is what the
  conversion cost.

The gate thresholds are per precision and overridable; a failed gate leaves
the artifact in the bundle with ``publishable=false`` and the CLI exits
non-zero.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shoplens.contract.errors import ShoplensError
from shoplens.contract.manifest import ParitySummary, Precision
from shoplens.converters.detector.metrics import MAP50, Agreement, label_file_for, load_yolo_labels
from shoplens.converters.detector.tflite import collect_images
from shoplens.sdk.images import load_rgb
from shoplens.sdk.preprocess import Letterbox
from shoplens.sdk.yolo_decode import Detections

#: ultralytics' validation thresholds: mAP needs the low-confidence tail
MAP_CONF, MAP_IOU = 0.001, 0.7
#: a detection counts as reproduced if the other side scores it >= threshold - this (see Agreement)
SCORE_TOLERANCE = 0.05

#: default gate per precision (override any key from the CLI). Float artifacts must be
#: near-identical; int8 gets a measured margin (see docs/converters.md for the numbers).
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"match_rate_min": 0.98, "score_mae_max": 0.005, "map50_drop_max": 0.005},
    "fp16": {"match_rate_min": 0.95, "score_mae_max": 0.02, "map50_drop_max": 0.02},
    "w8a32": {"match_rate_min": 0.90, "score_mae_max": 0.05, "map50_drop_max": 0.03},
    # int8 gets a measured margin (docs/converters.md). coco8 has 8 images, so one rank swap
    # moves mAP50 by 2-3 points: the mAP bound guards against collapse, the agreement is the test.
    "int8": {"match_rate_min": 0.90, "score_mae_max": 0.08, "map50_drop_max": 0.03},
}

class Predictor(Protocol):
    """An artifact (or the reference) as the gate sees it: raw inference, then the SDK decoder."""

    def infer(self, rgb: np.ndarray) -> tuple[Any, Letterbox]:
        """Raw outputs and the letterbox geometry for one decoded photo (each predictor prepares its own input)."""

    def decode(self, raw: Any, geo: Letterbox, conf: float, iou: float) -> Detections:
        """Detections in photo pixels from ``infer``'s outputs."""


@dataclass
class EvalImage:
    path: Path
    rgb: np.ndarray
    source: str
    gt_boxes: np.ndarray | None = None
    gt_classes: np.ndarray | None = None


@dataclass
class EvalSet:
    """Photos for the gate: ``labelled`` (coco8, for mAP50) + ``extra`` (e.g. Grocery Store, agreement only)."""

    images: list[EvalImage]

    @property
    def labelled(self) -> list[EvalImage]:
        return [im for im in self.images if im.gt_boxes is not None]

    def describe(self) -> str:
        by: dict[str, int] = {}
        for im in self.images:
            by[im.source] = by.get(im.source, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in by.items())


_GENERIC_DIRS = {"images", "labels", "train", "val", "valid", "test", "dataset"}


def source_name(d: Path) -> str:
    """A readable dataset name for reports: the first ancestor that is not images/, val/, dataset/..."""
    for part in [d, *d.parents]:
        if part.name and part.name.lower() not in _GENERIC_DIRS:
            return part.name
    return str(d)


def load_eval_set(labelled_dirs: list[Path], extra_dirs: list[Path], extra_limit: int = 8) -> EvalSet:
    """Labelled YOLO datasets (images/<split>/*.jpg + labels/) and unlabelled extra photos."""
    images: list[EvalImage] = []
    for d in labelled_dirs:
        for p in collect_images([Path(d)], limit=0):
            rgb = load_rgb(p)
            boxes, classes = load_yolo_labels(label_file_for(p), rgb.shape[0], rgb.shape[1])
            images.append(EvalImage(p, rgb, source_name(Path(d)), boxes, classes))
    for d in extra_dirs:
        for p in collect_images([Path(d)], limit=extra_limit):
            images.append(EvalImage(p, load_rgb(p), source_name(Path(d))))
    if not images:
        raise FileNotFoundError(f"no evaluation photos under {labelled_dirs + extra_dirs}")
    return EvalSet(images)


@dataclass
class ArtifactResult:
    name: str
    precision: str
    metrics: dict[str, float]
    thresholds: dict[str, float]
    passed: bool
    failures: list[str] = field(default_factory=list)
    per_image: list[dict[str, float | str]] = field(default_factory=list)

    def summary(self, report_file: str, method: str) -> ParitySummary:
        return ParitySummary(
            passed=self.passed,
            metrics={k: float(v) for k, v in self.metrics.items()},
            thresholds=self.thresholds,
            report=report_file,
            method=method,
        )


class ParityRun:
    """Reference detections computed once per photo, then any number of artifacts judged against them."""

    def __init__(self, evalset: EvalSet, reference: Predictor, conf: float, iou: float, score_tolerance: float = SCORE_TOLERANCE) -> None:
        self.evalset, self.conf, self.iou = evalset, conf, iou
        self.score_tolerance = score_tolerance
        self.conf_low = max(0.0, conf - score_tolerance)
        t0 = time.perf_counter()
        raws = [reference.infer(im.rgb) for im in evalset.images]
        self.ref_dets = [reference.decode(r, geo, conf, iou) for r, geo in raws]
        self.ref_low = [reference.decode(r, geo, self.conf_low, iou) for r, geo in raws]
        self.ref_map = self._map(reference, raws)
        self.reference_seconds = time.perf_counter() - t0

    def _map(self, predictor: Predictor, raws: list[tuple[Any, Letterbox]]) -> float:
        m = MAP50()
        for (raw, geo), im in zip(raws, self.evalset.images):
            if im.gt_boxes is None or im.gt_classes is None:
                continue
            m.add(predictor.decode(raw, geo, MAP_CONF, MAP_IOU), im.gt_boxes, im.gt_classes)
        return m.value()

    def judge(self, name: str, precision: Precision | str, predictor: Predictor, thresholds: dict[str, float]) -> ArtifactResult:
        """Agreement + mAP50 of one artifact, checked against ``thresholds``.

        An artifact the runtime cannot run as its manifest describes (a wrong input
        shape or type) fails the gate with the runtime's message.
        """
        t0 = time.perf_counter()
        try:
            raws = [predictor.infer(im.rgb) for im in self.evalset.images]
        except (ShoplensError, ValueError) as exc:
            return ArtifactResult(name, Precision(precision).value, {}, thresholds, False, [f"runtime: {exc}"])
        seconds = time.perf_counter() - t0
        agree = Agreement()
        per_image: list[dict[str, float | str]] = []
        for i, ((raw, geo), im) in enumerate(zip(raws, self.evalset.images)):
            cand = predictor.decode(raw, geo, self.conf, self.iou)
            cand_low = predictor.decode(raw, geo, self.conf_low, self.iou)
            before = agree.matched
            agree.add(self.ref_dets[i], cand, self.ref_low[i], cand_low)
            per_image.append(
                {"image": im.path.name, "source": im.source, "reference": len(self.ref_dets[i]), "artifact": len(cand), "matched": agree.matched - before}
            )
        metrics = agree.metrics()
        cand_map = self._map(predictor, raws)
        metrics.update(
            score_tolerance=self.score_tolerance,
            map50=cand_map,
            map50_reference=self.ref_map,
            map50_drop=self.ref_map - cand_map,
            images=float(len(self.evalset.images)),
            seconds_per_image=seconds / max(1, len(self.evalset.images)),
        )
        failures = check_thresholds(metrics, thresholds)
        return ArtifactResult(name, Precision(precision).value, metrics, thresholds, not failures, failures, per_image)


def check_thresholds(metrics: dict[str, float], thresholds: dict[str, float]) -> list[str]:
    """``<metric>_min`` / ``<metric>_max`` keys; each violated bound is one human-readable failure."""
    failures = []
    for key, bound in thresholds.items():
        metric, kind = key.rsplit("_", 1)
        value = metrics.get(metric)
        if value is None or not np.isfinite(value):
            failures.append(f"{metric} was not measured")
        elif kind == "min" and value < bound:
            failures.append(f"{metric} {value:.4f} < {bound}")
        elif kind == "max" and value > bound:
            failures.append(f"{metric} {value:.4f} > {bound}")
    return failures


def thresholds_for(precision: Precision | str, overrides: dict[str, float] | None = None) -> dict[str, float]:
    t = dict(DEFAULT_THRESHOLDS[Precision(precision).value])
    for k, v in (overrides or {}).items():
        if k not in t:
            raise ValueError(f"unknown parity threshold {k!r} (known: {sorted(t)})")
        t[k] = float(v)
    return t


def write_report(result: ArtifactResult, bundle_dir: Path, stem: str, context: dict[str, object]) -> str:
    """``<stem>.parity.json`` + ``<stem>.parity.md`` in the bundle; returns the JSON file name."""
    data = {"artifact": result.name, "precision": result.precision, "passed": result.passed, "failures": result.failures,
            "metrics": result.metrics, "thresholds": result.thresholds, "context": context, "per_image": result.per_image}
    json_name = f"{stem}.parity.json"
    (bundle_dir / json_name).write_text(json.dumps(data, indent=2, default=str) + "\n")
    m = result.metrics
    lines = [
        f"# Parity: {result.name} ({result.precision})",
        "",
        f"**{'PASS' if result.passed else 'FAIL'}**" + (": " + "; ".join(result.failures) if result.failures else ""),
        "",
        f"Method: {context.get('method', '')}",
        "",
        "| metric | value | threshold |",
        "|---|---|---|",
    ]
    bounds = {k.rsplit("_", 1)[0]: (k.rsplit("_", 1)[1], v) for k, v in result.thresholds.items()}
    for key in ("match_rate", "match_rate_strict", "match_rate_confident", "precision_vs_ref", "precision_vs_ref_strict", "score_mae", "score_max_err", "mean_iou", "map50", "map50_reference", "map50_drop"):
        if key in m:
            b = bounds.get(key)
            lines.append(f"| {key} | {m[key]:.4f} | {('>= ' if b[0] == 'min' else '<= ') + str(b[1]) if b else ''} |")
    lines += ["", "| image | source | reference | artifact | matched |", "|---|---|---|---|---|"]
    lines += [f"| {r['image']} | {r['source']} | {r['reference']} | {r['artifact']} | {r['matched']} |" for r in result.per_image]
    (bundle_dir / f"{stem}.parity.md").write_text("\n".join(lines) + "\n")
    return json_name
