"""Runners that execute the reference and each artifact for the parity gate, all decoded by the SDK.

Every runner takes the same letterboxed float32 NCHW 0-1 image and converts it
to what its artifact's input really is (the manifest records that contract),
so differences in the report come from the model, not from the harness.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoplens.converters.mil_eval import MILEvaluator
from shoplens.converters.yolo_reference import TORCH_THREADS, TorchDetector
from shoplens.sdk.preprocess import Letterbox
from shoplens.sdk.yolo_decode import Detections, decode_yolo_raw


@dataclass
class _RawYolo:
    """Shared decoding of a ``[1, 4 + nc, N]`` output (pixels or normalised boxes)."""

    num_classes: int
    boxes_normalized: bool

    def decode(self, raw: Any, geo: Letterbox, conf: float, iou: float) -> Detections:
        q = None
        if isinstance(raw, tuple):
            raw, q = raw
        return decode_yolo_raw(raw, geo, num_classes=self.num_classes, boxes_normalized=self.boxes_normalized,
                               conf_threshold=conf, iou_threshold=iou, quantization=q)


class TorchPredictor(_RawYolo):
    def __init__(self, ref: TorchDetector) -> None:
        super().__init__(ref.num_classes, boxes_normalized=False)
        self.ref = ref

    def infer(self, nchw01: np.ndarray) -> np.ndarray:
        return self.ref.raw(nchw01)


class TFLitePredictor(_RawYolo):
    """The LiteRT interpreter on CPU; quantised I/O (if any) handled from the tensor details."""

    def __init__(self, path: Path, num_classes: int, threads: int = TORCH_THREADS) -> None:
        super().__init__(num_classes, boxes_normalized=True)
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=str(path), num_threads=threads)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]

    def infer(self, nchw01: np.ndarray) -> Any:
        x = nchw01 if int(self.inp["shape"][1]) == 3 else nchw01.transpose(0, 2, 3, 1)
        scale, zp = self.inp["quantization"]
        if scale:
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.round(x / scale + zp), info.min, info.max)
        self.interp.set_tensor(self.inp["index"], np.ascontiguousarray(x.astype(self.inp["dtype"])))
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"]).copy()
        oscale, ozp = self.out["quantization"]
        return (y, (float(oscale), int(ozp))) if oscale else y


class CoreMLPredictor(_RawYolo):
    """The .mlpackage's ML program evaluated op by op; an NMS pipeline's Apple NMS stage is the SDK's NMS."""

    def __init__(self, path: Path, num_classes: int, nms: bool) -> None:
        super().__init__(num_classes, boxes_normalized=nms)
        self.nms = nms
        self.ev = MILEvaluator.from_mlpackage(path)
        if len(self.ev.input_names) != 1:
            raise ValueError(f"{path.name}: expected one image input, got {self.ev.input_names}")
        self.boxes_name = ""
        if nms:  # the NMS stage names which program output holds the coordinates
            spec = self.ev.loaded.spec
            stages = [m for m in spec.pipeline.models if m.WhichOneof("Type") == "nonMaximumSuppression"]
            if not stages:
                raise ValueError(f"{path.name}: no NonMaximumSuppression stage in the pipeline")
            self.boxes_name = stages[0].nonMaximumSuppression.coordinatesInputFeatureName

    def infer(self, nchw01: np.ndarray) -> np.ndarray:
        # the image input is 0-255 RGB (what a CVPixelBuffer holds); the program scales by 1/255 itself
        pixels = np.round(nchw01 * 255.0).astype(np.float32)
        outs = self.ev.run({self.ev.input_names[0]: pixels})
        if not self.nms:
            return np.asarray(next(iter(outs.values())), np.float32)
        boxes = np.asarray(outs[self.boxes_name], np.float32)
        scores = next(np.asarray(v, np.float32) for k, v in outs.items() if k != self.boxes_name)
        return np.concatenate([boxes, scores], axis=1).T[None]  # -> [1, 4 + nc, N], boxes 0-1


class MLModelPredictor(_RawYolo):
    """Core ML itself (``MLModel.predict``): macOS only, the check the op-by-op evaluation cannot make.

    An NMS pipeline's outputs are already suppressed by Apple's NMS; they are
    handed to the SDK decoder as ``[1, 4 + nc, K]`` (its NMS is then a no-op up
    to ties), with the pipeline's own thresholds lowered so mAP sees the tail.
    """

    def __init__(self, path: Path, num_classes: int, nms: bool) -> None:
        super().__init__(num_classes, boxes_normalized=nms)
        import coremltools as ct

        self.nms = nms
        self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        spec = self.model.get_spec()
        self.inputs = {i.name for i in spec.description.input}
        self.image_name = next(i.name for i in spec.description.input if i.type.WhichOneof("Type") == "imageType")

    def infer(self, nchw01: np.ndarray) -> np.ndarray:
        from PIL import Image

        rgb = np.round(nchw01[0].transpose(1, 2, 0) * 255.0).clip(0, 255).astype(np.uint8)
        feed: dict[str, Any] = {self.image_name: Image.fromarray(rgb)}
        if "confidenceThreshold" in self.inputs:
            feed["confidenceThreshold"] = 0.001
        if "iouThreshold" in self.inputs:
            feed["iouThreshold"] = 0.7
        outs = self.model.predict(feed)
        if not self.nms:
            return np.asarray(next(iter(outs.values())), np.float32)
        boxes = np.asarray(outs["coordinates"], np.float32).reshape(-1, 4)
        scores = np.asarray(outs["confidence"], np.float32).reshape(len(boxes), -1)
        return np.concatenate([boxes, scores], axis=1).T[None]


def mlmodel_predict_available() -> bool:
    """Core ML runs models only on macOS (coremltools' predict needs the Core ML framework)."""
    import sys

    return sys.platform == "darwin"


def torch_predictor(ref: TorchDetector) -> TorchPredictor:
    return TorchPredictor(ref)


def tflite_predictor(path: Path, num_classes: int) -> TFLitePredictor:
    return TFLitePredictor(path, num_classes)


def coreml_predictor(path: Path, num_classes: int, nms: bool) -> CoreMLPredictor:
    return CoreMLPredictor(path, num_classes, nms)
