"""YOLO -> TFLite through ultralytics' LiteRT route (litert-torch, no tensorflow).

Precisions:

- ``fp32``: the float graph as litert-torch lowers it.
- ``int8``: static integer (int8 weights *and* activations, except the first
  convolution, which stays float: see below), calibrated on the user's images
  through a generated ultralytics data yaml; graph input and output stay
  float32 (the quantize/dequantize ops live inside the graph).
- ``w8a32``: dynamic range: int8 weights, float activations, no calibration.
- ``fp16``: not offered by ultralytics' route, so made here from the fp32 file
  with ai-edge-quantizer's float-casting weight-only recipe: conv/FC weights
  stored as float16 and dequantised to float32 at load (the classic TFLite
  "float16 quantisation": half the size, fp32 arithmetic on CPU; a GPU
  delegate may run it in fp16).

``w8a16`` (int16 activations) is deliberately not offered: ~2.5 s per image on CPU.

Two changes are applied to static int8, both found by the parity gate (the
measurements, and the alternatives that were not better, are in docs/converters.md):

Calibration ranges. ai-edge-quantizer keeps a *moving average* of each
activation's per-image min/max while calibrating. For YOLO's class-logit tensor
that average sits near the typical image's best logit (~0 on product photos), so
the int8 range would top out there and clip every confident score to ~0.5. The
decode tail (from the head's last box and class convolutions to the output,
found by walking the float graph: ``decode_tail_tensors``) therefore takes the
global min/max over all calibration images, as TFLite's classic converter does;
every other tensor takes the mean of the per-image min/max, which lets rare
outliers clip and leaves more int8 steps for typical activations. Both merges
ignore the order of the images, so the same command gives the same file
(ultralytics shuffles the calibration loader with an unseeded generator).

The first convolution stays float. ``model.0`` (3 -> 16 channels on the full
resolution image, with its SiLU) would get one int8 scale for 16 channels of
very different ranges, the largest single source of score error; float costs
~1 KB and no measurable latency.

The LiteRT export divides the box rows by the input size, so boxes come out
normalised 0-1; otherwise int8's single per-tensor output scale would have to
cover both pixel coordinates (0-640) and scores (0-1) and the scores collapse.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from shoplens.contract.manifest import (
    ArtifactFormat,
    ColorOrder,
    InputSpec,
    Layout,
    OutputRole,
    OutputSpec,
    Precision,
    Quantization,
    ResizeMode,
    TensorDType,
)
from shoplens.converters.common.errors import ConversionError
from shoplens.offline import prepare_ultralytics

TFLITE_PRECISIONS = (Precision.FP32, Precision.FP16, Precision.INT8, Precision.W8A32)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class Exported:
    """One converted file before it is moved into the bundle."""

    path: Path
    format: ArtifactFormat
    precision: Precision
    seconds: float
    notes: str = ""


def collect_images(dirs: list[Path], limit: int) -> list[Path]:
    """Image files under ``dirs`` (recursive, sorted), evenly subsampled to at most ``limit``."""
    found: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_file() and d.suffix.lower() in IMAGE_SUFFIXES:
            found.append(d)
        elif d.is_dir():
            found.extend(sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            raise FileNotFoundError(f"calibration/evaluation path not found: {d}")
    if limit > 0 and len(found) > limit:
        step = len(found) / limit
        found = [found[int(i * step)] for i in range(limit)]
    return found


def write_calibration_yaml(images: list[Path], work_dir: Path, class_names: list[str]) -> Path:
    """An ultralytics data yaml whose ``val`` split is a private folder of links to the calibration images.

    The links keep ultralytics' label cache (written beside the images) out of
    the user's dataset, and no ``download:`` key exists, so nothing is fetched.
    """
    if not images:
        raise ConversionError("static int8 needs calibration images: pass --calib DIR with photos like the app will see")
    folder = work_dir / "calibration"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        (folder / f"{i:05d}{img.suffix.lower()}").symlink_to(Path(img).resolve())
    yaml = work_dir / "calibration.yaml"
    names = "".join(f"  {i}: {_yaml_str(n)}\n" for i, n in enumerate(class_names))
    yaml.write_text(f"path: {work_dir.resolve()}\ntrain: calibration\nval: calibration\nnames:\n{names}")
    return yaml


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _global_min_max(qsv: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Running global min/max of a tensor over calibration images (instead of a moving average)."""
    import numpy as np

    if not qsv:
        return new
    out = dict(new)
    out["min"] = np.minimum(qsv["min"], new["min"])
    out["max"] = np.maximum(qsv["max"], new["max"])
    return out


FIRST_CONV_FLOAT_REGEX = r".*DetectionModel_model/[^/;]*_0(/|;).*"
"""The model's first module (``model.0``, the 3 -> 16 channel stem convolution and its SiLU): kept float."""


def decode_tail_tensors(model: bytes) -> set[str]:
    """Names of the tensors from the head's last convolutions (box and class branches) to the graph output.

    Found by walking the float graph back from its output and stopping at the first
    convolutions met (the DFL's fixed 16 -> 1 convolution is part of the tail and is
    walked through), so the set follows the graph rather than a naming convention.
    """
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    ops = it._get_ops_details()  # noqa: SLF001 - the interpreter's only graph listing
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    producer = {out: op for op in ops for out in op["outputs"]}
    found: set[str] = set()
    stack = [d["index"] for d in it.get_output_details()]
    while stack:
        t = stack.pop()
        op = producer.get(t)
        if op is None or names[t] in found:  # a constant / graph input, or already seen
            continue
        found.add(names[t])
        if op["op_name"] == "CONV_2D" and "DFL" not in names[t]:
            continue
        stack.extend(op["inputs"])
    if not any("DFL" in n for n in found):
        raise ConversionError("could not find the YOLO decode tail (DFL) in the exported graph; is this a detection model?")
    return found


class _TailGlobalRestMeanStats:
    """Per-tensor merge of calibration statistics: global min/max in the decode tail, mean per-image min/max elsewhere.

    Both are independent of the order the images come in (ultralytics shuffles the
    calibration loader with an unseeded generator, and the quantizer's own moving
    average made the same command give different int8 files: 0.941-0.952 agreement).
    """

    def __init__(self, global_tensors: set[str] | None = None) -> None:
        self.global_tensors: set[str] = set(global_tensors or ())
        self._sums: dict[str, tuple[Any, Any, int]] = {}

    def update(self, model_qsvs: dict[str, Any], op_qsvs: dict[str, Any], ignore: set[str]) -> set[str]:
        import numpy as np

        updated: set[str] = set()
        for name, qsv in op_qsvs.items():
            if name in ignore:  # already updated by an earlier op in this image's pass
                continue
            if name in self.global_tensors:
                prev = model_qsvs.get(name)
                model_qsvs[name] = qsv if prev is None else _global_min_max(prev, qsv)
            else:
                lo, hi, n = self._sums.get(name, (0.0, 0.0, 0))
                # float64 sums: float32 ones rounded differently per order (scales moved ~4e-7, 2 boxes flipped)
                lo, hi, n = lo + np.asarray(qsv["min"], np.float64), hi + np.asarray(qsv["max"], np.float64), n + 1
                self._sums[name] = (lo, hi, n)
                dtype = np.asarray(qsv["min"]).dtype
                model_qsvs[name] = dict(qsv, min=(lo / n).astype(dtype), max=(hi / n).astype(dtype))
            updated.add(name)
        return updated


@contextlib.contextmanager
def _int8_policy(global_tensors: set[str] | None = None) -> Iterator[None]:
    """While active, ai-edge-quantizer quantises YOLO the way this converter measured best.

    - the calibrator merges statistics with ``_TailGlobalRestMeanStats``, the decode
      tail found in the float graph it is given (``global_tensors`` presets it, for tests);
    - every recipe loaded also keeps ``model.0`` float (``FIRST_CONV_FLOAT_REGEX``).
    """
    from ai_edge_quantizer import calibrator, qtyping, quantizer, recipe

    stats = _TailGlobalRestMeanStats(global_tensors)
    original_update = calibrator.Calibrator._update_qsvs
    original_calibrate = quantizer.Quantizer.calibrate
    original_load = quantizer.Quantizer.load_quantization_recipe

    def update(self: Any, op_qsvs: dict[str, Any], ignore: set[str], qsv_update_func: Any) -> set[str]:
        return stats.update(self._model_qsvs, op_qsvs, ignore)

    def calibrate(self: Any, *args: Any, **kwargs: Any) -> Any:
        stats.global_tensors = decode_tail_tensors(bytes(self._float_model_buffer))
        return original_calibrate(self, *args, **kwargs)

    def load(self: Any, *args: Any, **kwargs: Any) -> None:
        original_load(self, *args, **kwargs)
        self.update_quantization_recipe(
            regex=FIRST_CONV_FLOAT_REGEX,
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=recipe.AlgorithmName.NO_QUANTIZE,
        )

    calibrator.Calibrator._update_qsvs = update
    quantizer.Quantizer.calibrate = calibrate
    quantizer.Quantizer.load_quantization_recipe = load
    try:
        yield
    finally:
        calibrator.Calibrator._update_qsvs = original_update
        quantizer.Quantizer.calibrate = original_calibrate
        quantizer.Quantizer.load_quantization_recipe = original_load


def export_tflite(
    weights: Path,
    imgsz: int,
    precision: Precision,
    work_dir: Path,
    calib_images: list[Path] | None = None,
    fp32_file: Path | None = None,
) -> Exported:
    """Export one TFLite precision into ``work_dir`` (a private copy of the weights lives there)."""
    precision = Precision(precision)
    if precision not in TFLITE_PRECISIONS:
        raise ConversionError(f"TFLite {precision.value} is not offered (choose from {[p.value for p in TFLITE_PRECISIONS]})")
    if precision is Precision.FP16:
        if fp32_file is None:
            raise ConversionError("TFLite fp16 is derived from the fp32 file; convert fp32 first")
        return _fp16_from_fp32(fp32_file, work_dir)
    prepare_ultralytics()
    from ultralytics import YOLO

    work_dir.mkdir(parents=True, exist_ok=True)
    local = work_dir / weights.name  # ultralytics writes exports beside the weights: keep them out of shared dirs
    if not local.exists():
        shutil.copyfile(weights, local)
    kwargs: dict = {"format": "litert", "imgsz": imgsz, "batch": 1, "verbose": False}
    if precision is Precision.INT8:
        yaml = write_calibration_yaml(list(calib_images or []), work_dir, _names(local))
        kwargs.update(quantize=8, data=str(yaml), fraction=1.0)
    elif precision is Precision.W8A32:
        kwargs.update(quantize="w8a32")
    t0 = time.perf_counter()
    try:
        with _int8_policy() if precision is Precision.INT8 else contextlib.nullcontext():
            out = YOLO(str(local), task="detect").export(**kwargs)
    except Exception as exc:  # noqa: BLE001 - surface any exporter failure with context
        raise ConversionError(f"ultralytics LiteRT export ({precision.value}) failed: {exc}") from exc
    seconds = time.perf_counter() - t0
    path = Path(out)
    if not path.is_file():
        raise ConversionError(f"ultralytics reported {out} but no .tflite file is there")
    notes = {
        Precision.FP32: "float32 graph (litert-torch)",
        Precision.INT8: (
            f"static int8 weights+activations, calibrated on {len(calib_images or [])} images (decode tail: global "
            "min/max, elsewhere: mean per-image min/max); first convolution (model.0) float; float32 graph I/O"
        ),
        Precision.W8A32: "dynamic range: int8 weights, float32 activations",
    }[precision]
    return Exported(path, ArtifactFormat.TFLITE, precision, seconds, notes)


def _names(weights: Path) -> list[str]:
    from ultralytics import YOLO

    names = YOLO(str(weights), task="detect").names
    return [names[i] for i in range(len(names))]


def _fp16_from_fp32(fp32_file: Path, work_dir: Path) -> Exported:
    """Float16 weight storage (shared with the embedder: ``tflite_fp16``), fp32 compute."""
    from shoplens.converters.common.tflite_fp16 import cast_weights_to_fp16

    t0 = time.perf_counter()
    out = work_dir / f"{fp32_file.stem}_fp16.tflite"
    try:
        cast_weights_to_fp16(fp32_file, out)
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"fp16 weight casting with ai-edge-quantizer failed: {exc}") from exc
    return Exported(
        out,
        ArtifactFormat.TFLITE,
        Precision.FP16,
        time.perf_counter() - t0,
        "float16 weights (ai-edge-quantizer float casting), dequantised at load; float32 activations and I/O",
    )


def tflite_io_specs(path: Path) -> tuple[InputSpec, list[OutputSpec]]:
    """Read the interpreter's real input/output tensors into manifest specs (not what we expect: what is there)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    ins, outs = interp.get_input_details(), interp.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise ConversionError(f"{path.name}: expected 1 input and 1 output, got {len(ins)} and {len(outs)}")
    i = ins[0]
    shape = [int(s) for s in i["shape"]]
    layout = Layout.NCHW if shape[1] == 3 else Layout.NHWC
    inp = InputSpec(
        name=i["name"],
        shape=shape,
        layout=layout,
        dtype=_dtype(i["dtype"]),
        color_order=ColorOrder.RGB,
        resize=ResizeMode.LETTERBOX,
        pad_value=114,
        scale=1 / 255,
        quantization=_quant(i),
    )
    o = outs[0]
    out = OutputSpec(
        name=o["name"],
        shape=[int(s) for s in o["shape"]],
        dtype=_dtype(o["dtype"]),
        role=OutputRole.YOLO_RAW,
        quantization=_quant(o),
    )
    return inp, [out]


def _dtype(np_dtype: object) -> TensorDType:
    import numpy as np

    return TensorDType(np.dtype(np_dtype).name)


def _quant(detail: dict) -> Quantization | None:
    scale, zp = detail.get("quantization", (0.0, 0))
    return Quantization(scale=float(scale), zero_point=int(zp)) if scale else None
