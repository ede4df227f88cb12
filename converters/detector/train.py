"""``train_detector``: a one-class ("product") YOLO detector fine-tuned from a COCO checkpoint on catalog scenes.

Why one class: the phone crops what the detector boxes and the embedder says
which product it is, so the detector only has to say *where products are*. COCO's
80 classes are not products (cartons, loose produce, packages are "none" or the
wrong thing), and the issue's measurements show the COCO detector costs recall.

Order of work: the scene folder (``scene_dataset``: checked catalog, missing scenes
written), then ultralytics training from the COCO checkpoint into ``OUT/train``
(``weights/last.pt`` after each epoch; a rerun resumes from it with ultralytics'
``resume``, and a finished run is not trained again). The checkpoint's class
names come from ``data.yaml`` (``product``); ``shoplens convert detector`` copies
them into the bundle manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoplens.converters.detector.reference import resolve_weights
from shoplens.converters.detector.scene_dataset import CLASS_NAME, SceneDataset, SceneOptions, build_scene_dataset
from shoplens.offline import prepare_ultralytics

RUN_NAME = "train"


@dataclass
class DetectorTrainOptions:
    """Everything ``shoplens detector train`` accepts; the defaults are the full CPU run."""

    scenes: SceneOptions
    weights: str | Path = "yolov8n.pt"
    epochs: int = 30
    batch: int = 16
    patience: int = 10  # epochs without a better val mAP before stopping early
    device: str = ""  # ultralytics' choice ("" = a GPU when there is one, else CPU), or "cpu", "0"
    train_args: dict[str, Any] = field(default_factory=dict)  # more ultralytics train() arguments (hyperparameters)


@dataclass
class DetectorTrainResult:
    """What a training call produced."""

    dataset: SceneDataset
    run_dir: Path
    best: Path
    class_names: list[str]
    batch_losses: list[float]  # train loss (box + cls + dfl) of each batch this call trained; empty when nothing was left to train
    epochs_done: int  # epochs the run has completed in all its calls (rows of ultralytics' results.csv)
    seconds: float
    metrics: dict[str, float]  # ultralytics' last val metrics (mAP50 etc.) of this call


def run_finished(last: Path) -> bool:
    """Whether ``last.pt`` is the end of a finished run (ultralytics strips it and marks epoch -1)."""
    import torch

    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    return int(ckpt.get("epoch", -1)) == -1


def _class_names(weights: Path) -> list[str]:
    prepare_ultralytics()
    from ultralytics import YOLO

    names = YOLO(str(weights), task="detect").names
    return [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)


def train_detector(opts: DetectorTrainOptions, *, progress: bool = True) -> DetectorTrainResult:
    """Write the scenes, then train (or resume, or skip a finished run); raises the scene folder's errors unchanged."""
    dataset = build_scene_dataset(opts.scenes, progress=progress)
    run_dir = opts.scenes.out / RUN_NAME
    last, best = run_dir / "weights" / "last.pt", run_dir / "weights" / "best.pt"
    resume = last.is_file()
    if resume and run_finished(last):
        return DetectorTrainResult(dataset, run_dir, best, _class_names(best), [], _epochs_done(run_dir), 0.0, {})

    prepare_ultralytics()
    from tqdm import tqdm
    from ultralytics import YOLO

    model = YOLO(str(last if resume else resolve_weights(opts.weights)), task="detect")
    losses: list[float] = []
    bar = tqdm(total=opts.epochs, desc="detector epochs", unit="epoch", disable=not progress)

    def on_batch_end(trainer: Any) -> None:
        if trainer.loss_items is not None:
            losses.append(float(sum(float(v) for v in trainer.loss_items.values())))

    def on_epoch_end(trainer: Any) -> None:
        bar.n = trainer.epoch + 1
        bar.set_postfix(loss=f"{losses[-1]:.3f}" if losses else "-")
        bar.refresh()

    model.add_callback("on_train_batch_end", on_batch_end)
    model.add_callback("on_train_epoch_end", on_epoch_end)
    args: dict[str, Any] = dict(
        data=str(dataset.data_yaml), epochs=opts.epochs, imgsz=opts.scenes.imgsz, batch=opts.batch, patience=opts.patience,
        seed=opts.scenes.seed, deterministic=True, project=str(opts.scenes.out.resolve()), name=RUN_NAME, exist_ok=True,
        plots=False, workers=0, amp=False,  # not single_cls: it renames the class "item"
    )
    if opts.device:
        args["device"] = opts.device
    args.update(opts.train_args)
    t0 = time.perf_counter()
    try:
        trainer_metrics = model.train(**({**args, "resume": str(last)} if resume else args))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in getattr(trainer_metrics, "results_dict", {}).items()}
    names = _class_names(best)
    if names != [CLASS_NAME]:
        raise RuntimeError(f"{best} has classes {names}, expected [{CLASS_NAME!r}] from {dataset.data_yaml}")
    return DetectorTrainResult(dataset, run_dir, best, names, losses, _epochs_done(run_dir), seconds, metrics)


def _epochs_done(run_dir: Path) -> int:
    """Epochs recorded in ultralytics' ``results.csv`` (one row per epoch)."""
    f = run_dir / "results.csv"
    return max(0, len(f.read_text().splitlines()) - 1) if f.is_file() else 0
