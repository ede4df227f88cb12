"""TFLite export of the embedder (litert-torch) and its ai-edge-quantizer recipes.

Precisions map to ai-edge-quantizer recipes:
- ``fp32``: litert-torch output as is;
- ``int8``: static int8 weights + int8 activations, calibrated on real images
  (int8 compute end to end; the output is an int8 tensor with scale/zero point);
- ``w8a32``: dynamic-range (int8 weights, activations quantised on the fly);
- ``w8``: weight-only int8 (dequantised at load, float compute);
- ``fp16``: float16 weights, float compute (``tflite_fp16``, shared with the detector).
The input stays uint8 NHWC RGB (the cast and ImageNet normalisation are in
the graph), so a phone passes the resized crop bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from shoplens.contract.manifest import Precision
from shoplens.converters.common.errors import ConversionError
from shoplens.converters.embedder.model import Embedder

SIGNATURE = "serving_default"
RECIPES = {Precision.INT8: "static_wi8_ai8", Precision.W8A32: "dynamic_wi8_afp32", Precision.W8: "weight_only_wi8_afp32"}
TFLITE_PRECISIONS = (Precision.FP32, Precision.FP16, *RECIPES)


def export_fp32(model: Embedder, out: str | os.PathLike[str]) -> Path:
    import litert_torch

    size = model.config.input_size
    sample = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    edge = litert_torch.convert(model.eval(), (sample,))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    edge.export(str(out))
    return out


def quantize(fp32_path: str | os.PathLike[str], precision: Precision | str, out: str | os.PathLike[str], calib: Iterable[np.ndarray] = ()) -> Path:
    """Apply the recipe for ``precision``; ``calib`` yields uint8 [1,H,W,3] arrays (static int8 only)."""
    from ai_edge_quantizer import quantizer, recipe

    precision = Precision(precision)
    if precision is Precision.FP16:
        from shoplens.converters.common.tflite_fp16 import cast_weights_to_fp16

        return cast_weights_to_fp16(fp32_path, out)
    if precision not in RECIPES:
        raise ConversionError(f"TFLite {precision.value} is not offered (choose from {', '.join(p.value for p in TFLITE_PRECISIONS)})")
    q = quantizer.Quantizer(str(fp32_path), getattr(recipe, RECIPES[precision])())
    result = None
    if q.need_calibration:
        name = input_name(fp32_path)
        data = [{name: np.asarray(x, dtype=np.uint8).reshape(1, *np.shape(x)[-3:])} for x in calib]
        if not data:
            raise ConversionError("static int8 needs calibration images (--calib DIR)")
        result = q.calibrate({SIGNATURE: data}, num_threads=2)
    quantized = q.quantize(result, enable_progress_bar=False, enable_progress_report=False).quantized_model
    out = Path(out)
    out.write_bytes(bytes(quantized))
    return out


def input_name(path: str | os.PathLike[str]) -> str:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(str(path)).get_signature_list()[SIGNATURE]["inputs"][0]
