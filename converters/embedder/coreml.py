"""CoreML export of the embedder: ML program with an RGB ImageType input, fp32 / fp16 / int8 weights.

The ImageType carries no normalisation (scale 1, no bias): per-channel ImageNet
normalisation stays inside the graph (a single ImageType scale cost cos
0.9935 on ResNet50 fp16). ``int8`` is ``linear_quantize_weights`` (8-bit
symmetric weights, fp16 compute); no palettisation below 8 bits for embeddings.

Numeric parity needs a CoreML runtime (macOS) or an op-by-op evaluator of the
ML program; where ``shoplens.converters.common.mil_eval`` is available it is used,
otherwise the structure of the spec is checked and parity is reported pending.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from shoplens.contract.manifest import Precision
from shoplens.converters.common.errors import ConversionError
from shoplens.converters.embedder.model import Embedder, EmbedderNCHW

log = logging.getLogger("shoplens.embedder.coreml")

COREML_PRECISIONS = (Precision.FP32, Precision.FP16, Precision.INT8)
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"


def export(model: Embedder, precision: Precision | str, out: str | os.PathLike[str]) -> Path:
    """Write ``out`` (.mlpackage) for ``precision``."""
    import coremltools as ct

    precision = Precision(precision)
    if precision not in COREML_PRECISIONS:
        raise ConversionError(f"CoreML {precision.value} is not offered (choose from {', '.join(p.value for p in COREML_PRECISIONS)})")
    size = model.config.input_size
    wrapped = EmbedderNCHW(model).eval()
    example = torch.rand(1, 3, size, size) * 255
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, example)
    mlmodel = ct.convert(
        traced,
        inputs=[ct.ImageType(name=INPUT_NAME, shape=(1, 3, size, size), color_layout=ct.colorlayout.RGB, scale=1.0, bias=[0.0, 0.0, 0.0])],
        outputs=[ct.TensorType(name=OUTPUT_NAME)],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32 if precision is Precision.FP32 else ct.precision.FLOAT16,
        minimum_deployment_target=ct.target.iOS16,
    )
    if precision is Precision.INT8:
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

        cfg = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=512))
        mlmodel = linear_quantize_weights(mlmodel, config=cfg)
    mlmodel.short_description = f"shoplens embedder {model.config.trunk} {model.config.dim}-d ({precision.value})"
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    mlmodel.save(str(out))
    return out


def check_spec(path: str | os.PathLike[str], size: int, dim: int) -> dict[str, Any]:
    """Structural checks that hold without a CoreML runtime: ML program, RGB image input, [1, dim] output."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    desc = spec.description
    problems: list[str] = []
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"not an ML program ({spec.WhichOneof('Type')})")
    inp = desc.input[0]
    if inp.type.WhichOneof("Type") != "imageType":
        problems.append("input is not an ImageType")
    else:
        it = inp.type.imageType
        if (it.width, it.height) != (size, size):
            problems.append(f"input is {it.width}x{it.height}, expected {size}x{size}")
        if it.colorSpace != ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB:
            problems.append("input colour space is not RGB")
    out = desc.output[0]
    shape = list(out.type.multiArrayType.shape)
    if shape and shape[-1] != dim:
        problems.append(f"output shape {shape}, expected [1, {dim}]")
    return {"input": inp.name, "output": out.name, "output_shape": shape or [1, dim], "problems": problems}


def mil_evaluator_available() -> bool:
    return importlib.util.find_spec("shoplens.converters.common.mil_eval") is not None


def numeric_runner(path: str | os.PathLike[str]) -> Callable[[np.ndarray], np.ndarray] | None:
    """An ``input tensor [1, 3, H, W] -> vector`` function through the ML-program evaluator (None: parity pending).

    The tensor is what the manifest's input spec makes of a photo (the SDK's
    encoder), so the gate checks the spec together with the program.
    """
    if not mil_evaluator_available():
        return None
    from shoplens.converters.common.mil_eval import MILEvaluator, UnsupportedOp

    try:
        evaluator = MILEvaluator.from_mlpackage(path)
    except UnsupportedOp as exc:  # numeric parity stays pending, never guessed
        log.warning("%s: numeric CoreML parity pending: %s", Path(path).name, exc)
        return None
    name = evaluator.input_names[0]
    output = evaluator.output_names[0]

    def run(x: np.ndarray) -> np.ndarray:
        res = evaluator.run({name: np.asarray(x, dtype=np.float32)})
        return np.asarray(res[output], dtype=np.float32).reshape(-1)

    return run
