"""TFLite "float16 quantisation" for any converted model: fp16 weights, fp32 arithmetic.

Neither ultralytics' LiteRT route nor ai-edge-quantizer's named recipes offer it,
so both converters (detector and embedder) make it here from the fp32 file with
ai-edge-quantizer's FLOAT_CASTING weight-only configuration: conv / depthwise /
fully-connected weights are stored as float16 and dequantised to float32 at load
(half the file; CPU arithmetic unchanged; a GPU delegate may compute in fp16).
"""

from __future__ import annotations

import os
from pathlib import Path


def cast_weights_to_fp16(fp32_file: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write ``out``: ``fp32_file`` with float16 weight storage."""
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    rm = recipe_manager.RecipeManager()
    for op in (
        qtyping.TFLOperationName.CONV_2D,
        qtyping.TFLOperationName.DEPTHWISE_CONV_2D,
        qtyping.TFLOperationName.FULLY_CONNECTED,
    ):
        rm.add_weight_only_config(regex=".*", operation_name=op, num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    qt = quantizer.Quantizer(str(fp32_file))
    qt.load_quantization_recipe(rm.get_quantization_recipe())
    qt.quantize().export_model(str(out), overwrite=True)
    return out
