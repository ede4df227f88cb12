"""Decode raw YOLO outputs into detections in photo pixels: numpy only, shared by device and converters.

The phone has no torch, and the converters must prove the artifacts work with
the *same* decoding the phone runs, so this module is the one implementation
of: dequantisation, the ``[1, 4 + nc, N]`` layout (cx, cy, w, h then per-class
scores, no objectness), normalised vs pixel boxes, class-aware greedy NMS
(ultralytics semantics: a candidate needs its best class score strictly above
the confidence threshold, one label per box), and the inverse letterbox back
to the original photo. Everything it needs comes from the bundle manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shoplens.sdk.preprocess import Letterbox

if TYPE_CHECKING:  # the contract is importable everywhere; typing only, to keep imports light
    from shoplens.contract.manifest import DetectorSpec, OutputSpec

#: ultralytics caps the boxes entering NMS; kept identical so results match on crowded images
MAX_NMS_CANDIDATES = 30000


@dataclass
class Detections:
    """Detections of one photo: ``boxes`` xyxy in photo pixels [K, 4], ``scores`` [K], ``classes`` [K] int."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))

    def labelled(self, class_names: list[str]) -> list[dict[str, Any]]:
        """JSON-friendly list: label, class id, score, box [x1, y1, x2, y2]."""
        return [
            {
                "label": class_names[int(c)] if 0 <= int(c) < len(class_names) else str(int(c)),
                "class_id": int(c),
                "score": float(s),
                "box": [float(v) for v in b],
            }
            for b, s, c in zip(self.boxes, self.scores, self.classes)
        ]


def dequantize(raw: np.ndarray, scale: float | None = None, zero_point: int = 0) -> np.ndarray:
    """int8/uint8 tensor -> float32 with ``real = (q - zero_point) * scale``; floats pass through as float32."""
    if np.issubdtype(raw.dtype, np.integer):
        if not scale:
            raise ValueError(f"an integer output ({raw.dtype}) needs its quantization scale")
        return (raw.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
    return raw.astype(np.float32, copy=False)


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    out = np.empty_like(b)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    out[:, 0] = b[:, 0] - half_w
    out[:, 1] = b[:, 1] - half_h
    out[:, 2] = b[:, 0] + half_w
    out[:, 3] = b[:, 1] + half_h
    return out


def _pairwise_areas(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xyxy boxes [A, 4] x [B, 4] -> (intersection areas [A, B], areas of a [A], areas of b [B]), in float64."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter, area_a, area_b


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """``part / whole``, 0 where ``whole`` is 0."""
    return np.where(whole > 0, part / np.where(whole > 0, whole, 1), 0.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: [A, 4] x [B, 4] -> [A, B]."""
    inter, area_a, area_b = _pairwise_areas(a, b)
    return _share(inter, area_a[:, None] + area_b[None, :] - inter)


def box_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise overlap of xyxy boxes as a share of the smaller box's area: [A, 4] x [B, 4] -> [A, B].

    1 when one box lies inside the other, whatever their sizes (IoU would call a part inside its
    whole a small overlap); 0 for a box of no area.
    """
    inter, area_a, area_b = _pairwise_areas(a, b)
    return _share(inter, np.minimum(area_a[:, None], area_b[None, :]))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS on xyxy boxes; indices kept, highest score first (ties keep the earlier box)."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware NMS: a box only suppresses boxes of its own class (offset trick, as torchvision/ultralytics)."""
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    span = float(np.max(boxes) - np.min(boxes)) + 1.0
    offset = classes.astype(np.float64)[:, None] * span
    return nms(boxes.astype(np.float64) + offset, scores, iou_threshold)


def unletterbox(boxes_xyxy: np.ndarray, geo: Letterbox) -> np.ndarray:
    """Model-input pixels -> original photo pixels (remove pad, divide by gain, clip to the photo)."""
    out = boxes_xyxy.astype(np.float32).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - geo.pad_x) / geo.gain_x
    out[:, [1, 3]] = (out[:, [1, 3]] - geo.pad_y) / geo.gain_y
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, geo.orig_w)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, geo.orig_h)
    return out


def decode_yolo_raw(
    raw: np.ndarray,
    geo: Letterbox,
    *,
    num_classes: int,
    boxes_normalized: bool,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    quantization: tuple[float, int] | None = None,
) -> Detections:
    """Decode a ``[1, 4 + nc, N]`` (or ``[4 + nc, N]``) YOLO head output of one image.

    ``boxes_normalized``: boxes are 0-1 of the model input (LiteRT export) rather
    than input pixels (PyTorch, CoreML raw). ``quantization``: (scale,
    zero_point) of an integer output tensor.
    """
    x = dequantize(raw, *(quantization or (None, 0)))
    if x.ndim == 3:
        if x.shape[0] != 1:
            raise ValueError(f"decode one image at a time, got batch {x.shape[0]}")
        x = x[0]
    if x.ndim != 2 or x.shape[0] != 4 + num_classes:
        raise ValueError(f"expected [1, {4 + num_classes}, N] (4 box rows + {num_classes} classes), got {raw.shape}")
    cls_scores = x[4:]
    best = cls_scores.max(axis=0)
    cand = np.nonzero(best > conf_threshold)[0]
    if cand.size == 0:
        return Detections.empty()
    if cand.size > MAX_NMS_CANDIDATES:
        cand = cand[np.argsort(-best[cand], kind="stable")[:MAX_NMS_CANDIDATES]]
    boxes = x[:4, cand].T.copy()
    if boxes_normalized:
        boxes[:, [0, 2]] *= geo.input_w
        boxes[:, [1, 3]] *= geo.input_h
    boxes = xywh_to_xyxy(boxes)
    scores = best[cand]
    classes = cls_scores[:, cand].argmax(axis=0)
    keep = batched_nms(boxes, scores, classes, iou_threshold)[:max_detections]
    return Detections(unletterbox(boxes[keep], geo), scores[keep].astype(np.float32), classes[keep].astype(np.int64))


def decode_nms_outputs(
    boxes_xywh: np.ndarray,
    scores: np.ndarray,
    geo: Letterbox,
    *,
    boxes_normalized: bool = True,
    conf_threshold: float = 0.25,
) -> Detections:
    """Decode the CoreML NMS pipeline's outputs (already suppressed): ``[K, 4]`` cx,cy,w,h and ``[K, nc]`` scores."""
    if scores.shape[0] == 0:
        return Detections.empty()
    s = scores.astype(np.float32)
    best = s.max(axis=1)
    ok = best > conf_threshold
    b = boxes_xywh[ok].astype(np.float32).copy()
    if boxes_normalized:
        b[:, [0, 2]] *= geo.input_w
        b[:, [1, 3]] *= geo.input_h
    return Detections(unletterbox(xywh_to_xyxy(b), geo), best[ok], s[ok].argmax(axis=1).astype(np.int64))


def decode_with_manifest(raw: np.ndarray, geo: Letterbox, detector: "DetectorSpec", output: "OutputSpec", **overrides: Any) -> Detections:
    """Decode a ``yolo_raw`` output with everything taken from the bundle manifest (thresholds overridable)."""
    q = output.quantization
    return decode_yolo_raw(
        raw,
        geo,
        num_classes=len(detector.class_names),
        boxes_normalized=detector.boxes_normalized,
        conf_threshold=overrides.get("conf_threshold", detector.conf_threshold),
        iou_threshold=overrides.get("iou_threshold", detector.iou_threshold),
        max_detections=overrides.get("max_detections", detector.max_detections),
        quantization=(q.scale, q.zero_point) if q is not None else None,
    )
