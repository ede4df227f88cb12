"""Evaluate a CoreML ML program op by op in numpy: numeric parity for .mlpackage files on Linux.

coremltools can build and save CoreML models anywhere but only *run* them on
macOS, so on Linux a converter could only check the spec, not the numbers.
This module loads the program that is actually inside the ``.mlpackage``
(``coremltools.converters.mil.frontend.milproto.load``), materialises
compressed weights exactly as the runtime must (``constexpr_*`` ops via
``materialized_val_inference``: palettised LUTs, affine int8, ...), and
executes the ops in program order with numpy.

fp16 is emulated by rounding every fp16-typed op output to float16 (the
arithmetic inside an op runs in float32). That checks the graph's arithmetic
and the storage precision the program declares; it does not reproduce the
Neural Engine's or GPU's exact accumulation order, so expect small
differences on a device (compare with ``MLModel.predict`` on macOS).

About 45 op types are implemented: enough for YOLO detectors and ResNet-style
embedders; an unknown op raises ``UnsupportedOp`` naming it, never a silent
wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoplens.converters.common.mil_ops import OPS, Args, UnsupportedOp

__all__ = ["LoadedProgram", "MILEvaluator", "UnsupportedOp", "load_mlpackage"]


# ---- loading ---------------------------------------------------------------------


@dataclass
class LoadedProgram:
    """A loaded ML program plus the spec it came from (the whole pipeline, when it is one)."""

    spec: Any  # coremltools.proto.Model_pb2.Model (the top-level one)
    model_spec: Any  # the mlProgram model inside (== spec unless a pipeline)
    program: Any  # coremltools PyMIL Program
    path: Path

    @property
    def function(self) -> Any:
        return self.program.functions["main"]


def load_mlpackage(path: str | Path) -> LoadedProgram:
    """Load an .mlpackage; for a pipeline (e.g. model + NMS) the first ML program stage is taken."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil

    path = Path(path)
    spec = ct.utils.load_spec(str(path))
    model_spec = spec
    if spec.WhichOneof("Type") == "pipeline":
        programs = [m for m in spec.pipeline.models if m.WhichOneof("Type") == "mlProgram"]
        if not programs:
            raise ValueError(f"{path.name}: the pipeline has no ML program stage")
        model_spec = programs[0]
    if model_spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{path.name}: not an ML program ({model_spec.WhichOneof('Type')})")
    weights = path / "Data" / "com.apple.CoreML" / "weights"
    program = load_mil(model_spec, specification_version=model_spec.specificationVersion, file_weights_dir=str(weights))
    return LoadedProgram(spec, model_spec, program, path)


# ---- evaluation ------------------------------------------------------------------


def _is_fp16(var: Any) -> bool:
    from coremltools.converters.mil.mil import types

    dtype = var.dtype
    return dtype == types.fp16 or (types.is_tensor(var.sym_type) and var.sym_type.get_primitive() == types.fp16)


def _np_dtype(var: Any) -> np.dtype:
    from coremltools.converters.mil.mil import types

    return np.dtype(types.nptype_from_builtin(var.dtype))


class MILEvaluator:
    """Run the ``main`` function of a loaded ML program on numpy inputs.

    ``emulate_fp16=False`` computes fp16-typed ops in float32 without rounding
    (useful to separate quantisation error from fp16 rounding error).
    """

    def __init__(self, loaded: LoadedProgram, emulate_fp16: bool = True) -> None:
        self.loaded = loaded
        self.emulate_fp16 = emulate_fp16
        self._consts: dict[str, np.ndarray] = {}
        self._ops = list(loaded.function.operations)
        missing = sorted({op.op_type for op in self._ops if op.op_type not in OPS and not op.op_type.startswith("constexpr_") and op.op_type != "const"})
        if missing:
            raise UnsupportedOp(f"{loaded.path.name}: ops not implemented by mil_eval: {missing}")
        for op in self._ops:  # weights once: decompression is the slow part of a palettised model
            if op.op_type == "const" or op.op_type.startswith("constexpr_"):
                val = op.outputs[0].val if op.op_type == "const" else op.materialized_val_inference()
                self._consts[op.outputs[0].name] = np.asarray(val)

    @classmethod
    def from_mlpackage(cls, path: str | Path, emulate_fp16: bool = True) -> "MILEvaluator":
        return cls(load_mlpackage(path), emulate_fp16)

    @property
    def input_names(self) -> list[str]:
        return list(self.loaded.function.inputs)

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.loaded.function.outputs]

    @property
    def op_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self._ops:
            counts[op.op_type] = counts.get(op.op_type, 0) + 1
        return counts

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evaluate; returns every function output by name (float16 outputs as float16 arrays)."""
        fn = self.loaded.function
        env: dict[str, np.ndarray] = dict(self._consts)
        for name, var in fn.inputs.items():
            if name not in inputs:
                raise KeyError(f"missing input {name!r} (inputs: {list(fn.inputs)})")
            x = np.asarray(inputs[name])
            if tuple(x.shape) != tuple(int(s) for s in var.shape):
                raise ValueError(f"input {name!r}: shape {x.shape}, program expects {var.shape}")
            env[name] = x.astype(_np_dtype(var))
        with np.errstate(over="ignore", under="ignore"):  # exp() saturating in sigmoid/silu is expected
            self._execute(env)
        return {v.name: env[v.name] for v in fn.outputs}

    def _execute(self, env: dict[str, np.ndarray]) -> None:
        for op in self._ops:
            if op.outputs[0].name in env:
                continue
            results = OPS[op.op_type](op, Args(op, env))
            if not isinstance(results, tuple):
                results = (results,)
            for var, val in zip(op.outputs, results):
                env[var.name] = self._store(var, val)

    def _store(self, var: Any, val: np.ndarray) -> np.ndarray:
        val = np.asarray(val)
        if _is_fp16(var):
            return val.astype(np.float16) if self.emulate_fp16 else val.astype(np.float32)
        return val.astype(_np_dtype(var), copy=False)
