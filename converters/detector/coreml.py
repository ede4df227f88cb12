"""YOLO -> CoreML (.mlpackage) through ultralytics, plus the Linux-side checks of what came out.

Precisions: ``fp32`` (ML program pinned to float32), ``fp16`` (float16 weights
and compute, CoreML's default), ``int8`` (8-bit *linear* weights, symmetric with
one scale per output channel, dequantised by the runtime; float16 compute; not
integer arithmetic; iOS 16+). With ``nms=True`` the file is a pipeline: the ML
program followed by Apple's NonMaximumSuppression model, which Vision's
``VNCoreMLRequest`` consumes directly (outputs ``confidence`` [K, nc] and
``coordinates`` [K, 4], cx cy w h normalised to the input).

ultralytics' own CoreML int8 is 8-bit k-means *palettisation* of every constant
with >= 512 elements. Two changes (measured in docs/converters.md):

- only convolution/linear weights are quantised: the detection head's anchor
  grid and stride table have fewer distinct values than LUT entries, and
  k-means on them moved anchors by whole cells. They stay exact fp16.
- linear per-channel int8 instead of per-tensor k-means: it is the variant that
  keeps both the agreement with PyTorch and the mAP50 within the gate, and its
  weights are what "int8" says (int8 with a float scale per channel).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from shoplens.contract.manifest import ArtifactFormat, ColorOrder, InputSpec, Layout, OutputRole, OutputSpec, Precision, ResizeMode, TensorDType
from shoplens.converters.common.errors import ConversionError
from shoplens.converters.detector.tflite import Exported
from shoplens.offline import prepare_ultralytics

COREML_PRECISIONS = (Precision.FP32, Precision.FP16, Precision.INT8)
_QUANTIZE = {Precision.FP32: None, Precision.FP16: 16, Precision.INT8: 8}


@contextlib.contextmanager
def _int8_linear_conv_weights() -> Iterator[None]:
    """While active, ultralytics' int8 palettisation call quantises conv/linear weights linearly instead (module doc)."""
    import coremltools.optimize.coreml as cto

    original = cto.palettize_weights

    def linear(mlmodel: Any, config: Any = None, **_: Any) -> Any:
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=512)
        return cto.linear_quantize_weights(mlmodel, config=cto.OptimizationConfig(op_type_configs={"conv": op, "conv_transpose": op, "linear": op}))

    cto.palettize_weights = linear  # type: ignore[assignment]
    try:
        yield
    finally:
        cto.palettize_weights = original  # type: ignore[assignment]


def export_coreml(
    weights: Path,
    imgsz: int,
    precision: Precision,
    work_dir: Path,
    *,
    nms: bool,
    conf: float,
    iou: float,
) -> Exported:
    """Export one CoreML precision (optionally the NMS pipeline) into ``work_dir``."""
    precision = Precision(precision)
    if precision not in COREML_PRECISIONS:
        raise ConversionError(f"CoreML {precision.value} is not offered (choose from {[p.value for p in COREML_PRECISIONS]})")
    prepare_ultralytics()
    from ultralytics import YOLO

    work_dir.mkdir(parents=True, exist_ok=True)
    local = work_dir / weights.name
    if not local.exists():
        shutil.copyfile(weights, local)
    kwargs: dict[str, Any] = {"format": "coreml", "imgsz": imgsz, "batch": 1, "nms": nms, "verbose": False}
    if nms:
        kwargs.update(conf=conf, iou=iou)
    q = _QUANTIZE[precision]
    if q is not None:
        kwargs["quantize"] = q
    elif nms:  # ultralytics turns an nms export without a precision into fp16; say fp32 explicitly
        kwargs["quantize"] = 32
    t0 = time.perf_counter()
    try:
        with _int8_linear_conv_weights():
            out = Path(YOLO(str(local), task="detect").export(**kwargs))
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"ultralytics CoreML export ({precision.value}{', nms' if nms else ''}) failed: {exc}") from exc
    seconds = time.perf_counter() - t0
    if not out.is_dir():
        raise ConversionError(f"ultralytics reported {out} but no .mlpackage is there")
    final = work_dir / f"{local.stem}_{precision.value}{'_nms' if nms else ''}.mlpackage"
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    notes = {
        Precision.FP32: "float32 weights and compute",
        Precision.FP16: "float16 weights and compute",
        Precision.INT8: "8-bit linear per-channel conv weights (dequantised at load), float16 compute; iOS 16+",
    }[precision]
    if nms:
        notes += f"; Vision NMS pipeline (defaults conf {conf}, IoU {iou}, per class)"
    return Exported(final, ArtifactFormat.COREML, precision, seconds, notes)


# ---- spec checks ------------------------------------------------------------------


@dataclass
class SpecCheck:
    """What the .mlpackage declares, and every way it differs from what the bundle promises."""

    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems


def _feature_type(f: Any) -> str:
    return f.type.WhichOneof("Type")


def check_coreml_spec(path: Path, *, imgsz: int, class_names: list[str], precision: Precision, nms: bool, conf: float, iou: float) -> SpecCheck:
    """Inputs, outputs, types, metadata, pipeline wiring and weight dtypes against the requested conversion."""
    import coremltools as ct

    from shoplens.converters.common.mil_eval import load_mlpackage

    chk = SpecCheck()
    spec = ct.utils.load_spec(str(path))
    kind = spec.WhichOneof("Type")
    chk.facts["type"] = kind
    chk.facts["specification_version"] = int(spec.specificationVersion)
    if nms != (kind == "pipeline"):
        chk.problems.append(f"expected {'a pipeline' if nms else 'an ML program'}, found {kind}")
    ins = {i.name: i for i in spec.description.input}
    img = ins.get("image")
    if img is None or _feature_type(img) != "imageType":
        chk.problems.append(f"no 'image' image input (inputs: {list(ins)})")
    else:
        it = img.type.imageType
        chk.facts["image"] = {"width": it.width, "height": it.height, "color_space": ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(it.colorSpace)}
        if (it.width, it.height) != (imgsz, imgsz):
            chk.problems.append(f"image input is {it.width}x{it.height}, expected {imgsz}x{imgsz}")
        if chk.facts["image"]["color_space"] != "RGB":
            chk.problems.append(f"image colour space {chk.facts['image']['color_space']}, expected RGB")
    meta = dict(spec.description.metadata.userDefined)
    chk.facts["metadata_keys"] = sorted(meta)
    names_meta = meta.get("names", "")
    if class_names and class_names[0] not in names_meta:
        chk.problems.append("user-defined metadata 'names' does not list the class names")
    outs = [o.name for o in spec.description.output]
    chk.facts["outputs"] = outs
    if nms:
        models = spec.pipeline.models
        kinds = [m.WhichOneof("Type") for m in models]
        chk.facts["pipeline"] = kinds
        if kinds != ["mlProgram", "nonMaximumSuppression"]:
            chk.problems.append(f"pipeline stages {kinds}, expected ['mlProgram', 'nonMaximumSuppression']")
        else:
            prog_outs = [o.name for o in models[0].description.output]
            n = models[1].nonMaximumSuppression
            chk.facts["nms"] = {"iou": n.iouThreshold, "conf": n.confidenceThreshold, "per_class": n.pickTop.perClass, "labels": len(n.stringClassLabels.vector)}
            if {n.confidenceInputFeatureName, n.coordinatesInputFeatureName} != set(prog_outs):
                chk.problems.append(f"NMS inputs {n.confidenceInputFeatureName},{n.coordinatesInputFeatureName} are not the program outputs {prog_outs}")
            if (n.confidenceOutputFeatureName, n.coordinatesOutputFeatureName) != ("confidence", "coordinates"):
                chk.problems.append("NMS outputs are not named confidence/coordinates (Vision expects them)")
            if abs(n.iouThreshold - iou) > 1e-6 or abs(n.confidenceThreshold - conf) > 1e-6:
                chk.problems.append(f"NMS defaults iou {n.iouThreshold} conf {n.confidenceThreshold}, manifest says {iou}/{conf}")
            if list(n.stringClassLabels.vector) != list(class_names):
                chk.problems.append("NMS class labels differ from the model's class names")
            if not n.pickTop.perClass:
                chk.problems.append("NMS is class-agnostic; the decoder contract is per class")
        if set(outs) != {"confidence", "coordinates"}:
            chk.problems.append(f"pipeline outputs {outs}, expected confidence + coordinates")
    loaded = load_mlpackage(path)
    dtypes = _weight_dtypes(loaded)
    chk.facts["weights"] = dtypes
    expect = {Precision.FP32: "fp32", Precision.FP16: "fp16", Precision.INT8: "int8"}[precision]
    conv_kinds = {k for k in dtypes.get("conv", {})}
    if expect == "int8" and "int8" not in conv_kinds:
        chk.problems.append(f"int8 requested but conv weights are {sorted(conv_kinds)}")
    elif expect != "int8" and conv_kinds != {expect}:
        chk.problems.append(f"{precision.value} requested but conv weights are {sorted(conv_kinds)}")
    return chk


def _weight_dtypes(loaded: Any) -> dict[str, dict[str, int]]:
    """Count constant weights by consumer op type and storage: fp32 / fp16 / int8 (linear) / palettized / other constexpr."""
    counts: dict[str, dict[str, int]] = {}
    for op in loaded.function.operations:
        if not (op.op_type == "const" or op.op_type.startswith("constexpr_")):
            continue
        var = op.outputs[0]
        if var.val is None and not op.op_type.startswith("constexpr_"):
            continue
        if op.op_type == "const" and getattr(var.val, "size", 1) < 512:
            continue  # scalars and small vectors (biases, shapes) are not "weights"
        if op.op_type == "constexpr_lut_to_dense":
            storage = "palettized"
        elif op.op_type in ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"):
            storage = "int8" if np.asarray(op.inputs["quantized_data" if "quantized_data" in op.inputs else "data"].val).dtype == np.int8 else op.op_type
        elif op.op_type.startswith("constexpr_"):
            storage = op.op_type
        else:
            storage = {np.dtype(np.float16): "fp16", np.dtype(np.float32): "fp32"}.get(np.asarray(var.val).dtype, str(np.asarray(var.val).dtype))
        for child in var.child_ops:
            if child.op_type.startswith("constexpr_"):
                continue
            counts.setdefault(child.op_type, {})
            counts[child.op_type][storage] = counts[child.op_type].get(storage, 0) + 1
    return counts


def coreml_io_specs(path: Path, *, imgsz: int, nms: bool, num_classes: int) -> tuple[InputSpec, list[OutputSpec]]:
    """Manifest I/O for a CoreML detector: an RGB image input (the 1/255 scaling is inside the program)."""
    inp = InputSpec(
        name="image",
        shape=[1, 3, imgsz, imgsz],
        layout=Layout.NCHW,
        dtype=TensorDType.FLOAT32,
        color_order=ColorOrder.RGB,
        resize=ResizeMode.LETTERBOX,
        pad_value=114,
        scale=1.0,  # a CVPixelBuffer of 0-255 RGB; the program multiplies by 1/255 itself
    )
    if nms:
        outs = [
            OutputSpec(name="coordinates", shape=[-1, 4], dtype=TensorDType.FLOAT32, role=OutputRole.BOXES),
            OutputSpec(name="confidence", shape=[-1, num_classes], dtype=TensorDType.FLOAT32, role=OutputRole.SCORES),
        ]
    else:
        import coremltools as ct

        spec = ct.utils.load_spec(str(path))
        o = spec.description.output[0]
        shape = [int(s) for s in o.type.multiArrayType.shape]
        outs = [OutputSpec(name=o.name, shape=shape, dtype=TensorDType.FLOAT32, role=OutputRole.YOLO_RAW)]
    return inp, outs
