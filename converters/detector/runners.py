"""What the parity gate runs: the PyTorch reference and each artifact, every one decoded by the SDK.

Each predictor takes the decoded photo and prepares its input from an
``InputSpec`` with the SDK's encoder (``shoplens.sdk.tensors.prepare_input``):
the reference from ``reference_input``, an artifact from its entry in the
bundle's manifest. A TFLite artifact runs in the SDK's own ``Detector``, so the
gate judges what a phone runs and a wrong input spec in the manifest fails it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoplens.contract.manifest import ArtifactFormat, InputSpec, Precision, load_manifest
from shoplens.converters.common.mil_eval import MILEvaluator
from shoplens.converters.detector.reference import TORCH_THREADS, TorchDetector, reference_input
from shoplens.sdk.preprocess import Letterbox
from shoplens.sdk.runtime import Detector
from shoplens.sdk.tensors import prepare_input
from shoplens.sdk.yolo_decode import Detections, decode_yolo_raw


@dataclass
class _RawYolo:
    """Decoding of a ``[1, 4 + nc, N]`` output (pixels or normalised boxes) with the SDK decoder."""

    num_classes: int
    boxes_normalized: bool

    def decode(self, raw: Any, geo: Letterbox, conf: float, iou: float) -> Detections:
        return decode_yolo_raw(raw, geo, num_classes=self.num_classes, boxes_normalized=self.boxes_normalized,
                               conf_threshold=conf, iou_threshold=iou)


def _prepare(rgb: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Letterbox]:
    x, geo = prepare_input(rgb, spec)
    if geo is None:
        raise ValueError(f"a detector input must be letterboxed, the spec says {spec.resize.value}")
    return x, geo


class TorchPredictor(_RawYolo):
    def __init__(self, ref: TorchDetector, imgsz: int) -> None:
        super().__init__(ref.num_classes, boxes_normalized=False)
        self.ref, self.spec = ref, reference_input(imgsz)

    def infer(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        x, geo = _prepare(rgb, self.spec)
        return self.ref.raw(x), geo


class SDKPredictor:
    """A TFLite artifact through ``shoplens.sdk.runtime.Detector``, configured by the bundle's manifest alone."""

    def __init__(self, bundle: Path, precision: Precision, threads: int = TORCH_THREADS) -> None:
        self.detector = Detector(bundle, precision, num_threads=threads)

    def infer(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return self.detector.infer(rgb)

    def decode(self, raw: Any, geo: Letterbox, conf: float, iou: float) -> Detections:
        return self.detector.decode(raw, geo, conf_threshold=conf, iou_threshold=iou)


class CoreMLPredictor(_RawYolo):
    """The .mlpackage's ML program evaluated op by op; an NMS pipeline's Apple NMS stage is the SDK's NMS."""

    def __init__(self, path: Path, spec: InputSpec, num_classes: int, nms: bool) -> None:
        super().__init__(num_classes, boxes_normalized=nms)
        self.nms, self.spec = nms, spec
        self.ev = MILEvaluator.from_mlpackage(path)
        if len(self.ev.input_names) != 1:
            raise ValueError(f"{path.name}: expected one image input, got {self.ev.input_names}")
        self.boxes_name = ""
        if nms:  # the NMS stage names which program output holds the coordinates
            pipeline = self.ev.loaded.spec.pipeline
            stages = [m for m in pipeline.models if m.WhichOneof("Type") == "nonMaximumSuppression"]
            if not stages:
                raise ValueError(f"{path.name}: no NonMaximumSuppression stage in the pipeline")
            self.boxes_name = stages[0].nonMaximumSuppression.coordinatesInputFeatureName

    def infer(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        x, geo = _prepare(rgb, self.spec)
        outs = self.ev.run({self.ev.input_names[0]: x.astype(np.float32)})
        if not self.nms:
            return np.asarray(next(iter(outs.values())), np.float32), geo
        boxes = np.asarray(outs[self.boxes_name], np.float32)
        scores = next(np.asarray(v, np.float32) for k, v in outs.items() if k != self.boxes_name)
        return np.concatenate([boxes, scores], axis=1).T[None], geo  # -> [1, 4 + nc, N], boxes 0-1


class MLModelPredictor(_RawYolo):
    """Core ML itself (``MLModel.predict``): macOS only, the check the op-by-op evaluation cannot make.

    An NMS pipeline's outputs are already suppressed by Apple's NMS; they are
    handed to the SDK decoder as ``[1, 4 + nc, K]`` (its NMS is then a no-op up
    to ties), with the pipeline's own thresholds lowered so mAP sees the tail.
    """

    def __init__(self, path: Path, spec: InputSpec, num_classes: int, nms: bool) -> None:
        super().__init__(num_classes, boxes_normalized=nms)
        import coremltools as ct

        self.nms, self.spec = nms, spec
        self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        desc = self.model.get_spec().description
        self.inputs = {i.name for i in desc.input}
        self.image_name = next(i.name for i in desc.input if i.type.WhichOneof("Type") == "imageType")

    def infer(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        from PIL import Image

        x, geo = _prepare(rgb, self.spec)
        pixels = np.clip(np.round(x[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8)
        feed: dict[str, Any] = {self.image_name: Image.fromarray(pixels)}
        if "confidenceThreshold" in self.inputs:
            feed["confidenceThreshold"] = 0.001
        if "iouThreshold" in self.inputs:
            feed["iouThreshold"] = 0.7
        outs = self.model.predict(feed)
        if not self.nms:
            return np.asarray(next(iter(outs.values())), np.float32), geo
        boxes = np.asarray(outs["coordinates"], np.float32).reshape(-1, 4)
        scores = np.asarray(outs["confidence"], np.float32).reshape(len(boxes), -1)
        return np.concatenate([boxes, scores], axis=1).T[None], geo


def mlmodel_predict_available() -> bool:
    """Core ML runs models only on macOS (coremltools' predict needs the Core ML framework)."""
    import sys

    return sys.platform == "darwin"


def artifact_predictor(bundle: Path, fmt: ArtifactFormat, precision: Precision, num_classes: int, nms: bool) -> SDKPredictor | CoreMLPredictor:
    """The predictor of one artifact, configured from the bundle's manifest as written."""
    if fmt is ArtifactFormat.TFLITE:
        return SDKPredictor(bundle, precision)
    entry = load_manifest(bundle).artifact(fmt, precision)
    return CoreMLPredictor(bundle / entry.file, entry.input, num_classes, nms)
