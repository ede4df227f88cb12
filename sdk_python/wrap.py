"""Give an existing TFLite embedder a shoplens manifest, so the SDK and the service can use it.

Everything that can be read from the model (tensor names, shapes, dtypes,
quantisation) is read from it; what cannot (resize rule, pixel scaling) the
caller states. The ImageNet MobileNetV1 embedder in ../shared is the
reference case: uint8 pixels in, a 1024-d uint8 vector out.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from shoplens.contract.manifest import (
    ArtifactManifest,
    BundleManifest,
    EmbedderSpec,
    InputSpec,
    OutputSpec,
    Quantization,
    SourceSpec,
    artifact_sha256,
    artifact_size,
    save_manifest,
)
from shoplens.contract.model_id import compute_model_id

_DTYPES = {"uint8": "uint8", "int8": "int8", "float32": "float32", "float16": "float16", "int32": "int32"}


def _quant(detail: dict) -> Quantization | None:
    scale, zp = detail.get("quantization", (0.0, 0))
    return Quantization(scale=float(scale), zero_point=int(zp)) if scale else None


def wrap_tflite_embedder(
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    resize: str = "stretch",
    scale: float = 1.0,
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
    std: tuple[float, float, float] = (1.0, 1.0, 1.0),
    raw_pixels: bool = True,
    link: bool = False,
) -> BundleManifest:
    """Write ``out_dir/manifest.json`` (+ the model, copied or symlinked) for a TFLite embedder.

    ``raw_pixels``: feed uint8 pixels unchanged to a uint8 input (the usual
    case for quantised vision models, whose input quantisation already encodes
    the normalisation); otherwise ``(pixel*scale - mean)/std`` is quantised
    with the input tensor's own parameters.
    """
    from ai_edge_litert.interpreter import Interpreter

    src = Path(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / src.name
    if target.resolve() != src.resolve():
        if target.exists() or target.is_symlink():
            target.unlink()
        if link:
            target.symlink_to(src.resolve())
        else:
            shutil.copyfile(src, target)
    it = Interpreter(model_path=str(target))
    (inp,) = it.get_input_details()
    outs = it.get_output_details()
    if len(outs) != 1:
        raise ValueError(f"{src.name}: an embedder has one output, this model has {len(outs)}")
    (o,) = outs
    dim = int(o["shape"][-1])
    in_dtype = _DTYPES[str(inp["dtype"].__name__ if hasattr(inp["dtype"], "__name__") else inp["dtype"])]
    raw = raw_pixels and in_dtype == "uint8"
    input_spec = InputSpec(
        name=inp["name"],
        shape=[int(s) for s in inp["shape"]],
        layout="NHWC",
        dtype=in_dtype,
        resize=resize,
        scale=1.0 if raw else scale,
        mean=[0.0, 0.0, 0.0] if raw else list(mean),
        std=[1.0, 1.0, 1.0] if raw else list(std),
        quantization=None if raw else _quant(inp),
    )
    out_dtype = _DTYPES[o["dtype"].__name__]
    weights_sha = artifact_sha256(src)
    nm = name or src.stem
    preprocessing = {"size": [input_spec.height, input_spec.width], "resize": resize, "color": "RGB", "pixels": "raw-uint8" if raw else {"scale": scale, "mean": list(mean), "std": list(std)}}
    manifest = BundleManifest(
        name=nm,
        task="embedder",
        source=SourceSpec(name=nm, weights=src.name, weights_sha256=weights_sha),
        tools={"wrapped-by": "shoplens.sdk.wrap"},
        embedder=EmbedderSpec(
            dim=dim,
            l2_in_graph=False,
            preprocessing=preprocessing,
            model_id=compute_model_id(name=nm, weights_sha256=weights_sha, preprocessing=preprocessing, dim=dim),
        ),
        artifacts=[
            ArtifactManifest(
                file=target.name,
                format="tflite",
                precision="int8" if out_dtype in ("uint8", "int8") else "fp32",
                sha256=artifact_sha256(target),
                size_bytes=artifact_size(target),
                input=input_spec,
                outputs=[OutputSpec(name=o["name"], shape=[int(s) for s in o["shape"]], dtype=out_dtype, role="embedding", quantization=_quant(o))],
                publishable=True,
                notes="third-party model wrapped as-is: no conversion, so no parity report",
            )
        ],
    )
    save_manifest(manifest, out)
    return manifest
