"""The PyTorch fp32 reference every detector artifact is compared with.

Loads an ultralytics checkpoint offline (never a randomly initialised model:
it gives near-constant outputs that would make any parity check pass) and runs
the raw head on inputs prepared by the SDK's own letterbox, so the reference
and the artifacts see bit-identical pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoplens.contract.manifest import ColorOrder, InputSpec, Layout, ResizeMode, TensorDType, TrainingRecord
from shoplens.contract.model_id import sha256_file
from shoplens.offline import prepare_ultralytics
from shoplens.resources import ResourceNotFound, find_weights, is_offline

#: stay polite on shared CI/dev boxes; conversions and parity runs are not latency critical
TORCH_THREADS = int(os.environ.get("SHOPLENS_TORCH_THREADS", "2"))


def resolve_weights(weights: str | os.PathLike[str]) -> Path:
    """A local checkpoint path, or a registry name (``yolo11n.pt``) ultralytics may download when online.

    Offline, a name that is nowhere on disk is a clear error listing where it
    was searched; no download is attempted.
    """
    lookup = find_weights(weights)
    if lookup.path is not None:
        return lookup.path
    name = Path(weights).name
    if Path(weights).parent != Path(".") or not name.endswith(".pt"):
        return lookup.require()
    if is_offline():
        return lookup.require(
            hint=f"Offline: {name} cannot be downloaded. Put it in one of the folders above or set SHOPLENS_WEIGHTS_DIR."
        )
    prepare_ultralytics()
    from ultralytics.utils.downloads import attempt_download_asset

    try:
        got = Path(attempt_download_asset(name))
    except Exception as exc:  # noqa: BLE001 - any download failure is the same user problem
        raise ResourceNotFound(f"{name}: not found locally and the download failed: {exc}") from exc
    if not got.is_file():
        return lookup.require(hint=f"ultralytics did not provide {name}")
    return got.resolve()


def reference_input(imgsz: int) -> InputSpec:
    """What the PyTorch model takes: ultralytics' letterbox, float32 NCHW RGB scaled to 0-1."""
    return InputSpec(name="images", shape=[1, 3, imgsz, imgsz], layout=Layout.NCHW, dtype=TensorDType.FLOAT32,
                     color_order=ColorOrder.RGB, resize=ResizeMode.LETTERBOX, pad_value=114, scale=1 / 255)


@dataclass
class TorchDetector:
    """An ultralytics detection model in eval mode plus the facts the manifest needs."""

    model: Any  # ultralytics.YOLO
    weights: Path
    class_names: list[str]
    stride: int
    license: str | None = None  # as the checkpoint declares it (Ultralytics checkpoints: AGPL-3.0)
    training: TrainingRecord | None = None  # the run that wrote the checkpoint, when it records one

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def weights_sha256(self) -> str:
        return sha256_file(self.weights)

    def raw(self, nchw: np.ndarray) -> np.ndarray:
        """Raw head output ``[1, 4 + nc, N]`` with boxes in input pixels, for a float32 NCHW 0-1 input."""
        import torch

        torch.set_num_threads(TORCH_THREADS)
        net = self.model.model
        with torch.inference_mode():
            y = net(torch.from_numpy(np.ascontiguousarray(nchw, dtype=np.float32)))
        y = y[0] if isinstance(y, (list, tuple)) else y
        return y.float().numpy()


def load_torch_detector(weights: str | os.PathLike[str]) -> TorchDetector:
    """Load a detection checkpoint for reference inference (CPU, fp32, fused as ultralytics predicts)."""
    prepare_ultralytics()
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(TORCH_THREADS)
    path = resolve_weights(weights)
    model = YOLO(str(path), task="detect")
    if model.task != "detect":
        raise ValueError(f"{path.name} is a {model.task!r} model; the detector converter needs a detection model")
    net = model.model.float().eval()
    net.fuse() if hasattr(net, "fuse") else None
    names = model.names
    class_names = [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)
    ckpt = getattr(model, "ckpt", None)
    declared = ckpt.get("license") if isinstance(ckpt, dict) else None
    return TorchDetector(model, path, class_names, int(max(net.stride)), str(declared) if declared else None,
                         training_record(ckpt) if isinstance(ckpt, dict) else None)


def training_record(ckpt: dict[str, Any]) -> TrainingRecord | None:
    """The training run an ultralytics checkpoint records (``train_results``: per-epoch rows with ultralytics'
    cumulative ``time``; ``train_metrics``: the final validation), or None when it records none (the
    official COCO checkpoints carry only their arguments)."""
    results = ckpt.get("train_results")
    if not isinstance(results, dict) or not results.get("epoch"):
        return None
    times = results.get("time") or []
    args = ckpt.get("train_args") or {}
    metrics = {k: float(v) for k, v in (ckpt.get("train_metrics") or {}).items() if isinstance(v, (int, float))}
    return TrainingRecord(epochs=len(results["epoch"]), seconds=round(float(times[-1]), 1) if times else None,
                          imgsz=int(args["imgsz"]) if isinstance(args.get("imgsz"), int) else None,
                          data=str(args["data"]) if args.get("data") else None, metrics=metrics,
                          finished_at=str(ckpt["date"]) if ckpt.get("date") else None)
