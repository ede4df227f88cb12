"""``shoplens convert detector``: YOLO checkpoint -> TFLite / CoreML bundle with a parity gate (``shoplens detector train``: train_cli.py).

Heavy imports happen inside the command so ``shoplens --help`` stays fast.
Exit codes: 0 all artifacts passed the gate; 1 at least one failed (it stays
in the bundle, ``publishable=false``); 2 a usage or conversion error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()

_PRECISION_HELP = (
    "Comma list; prefix one with a target to limit it (tflite:fp32,coreml:int8). tflite: fp32, fp16 (float16 weights via ai-edge-quantizer, fp32 compute), int8 (static, calibrated "
    "on --calib), w8a32 (dynamic-range int8 weights). coreml: fp32, fp16, int8 (8-bit linear per-channel weights, fp16 compute). "
    "w8a16 is not offered (~2.5 s/image on CPU). Unsupported target/precision pairs are skipped and listed."
)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_thresholds(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--gate")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"{key}: {value!r} is not a number", param_hint="--gate") from None
    return out


def detector_command(
    weights: str = typer.Option("yolov8n.pt", help="Checkpoint: a path, or a file name looked up in SHOPLENS_WEIGHTS_DIR, ../shared/weights, the cache (downloaded by ultralytics only when online)."),
    imgsz: int = typer.Option(640, help="Square input size (multiple of 32)."),
    targets: str = typer.Option("tflite,coreml", help="Comma list: tflite, coreml."),
    precision: str = typer.Option("fp32,fp16,int8", help=_PRECISION_HELP),
    calib: list[Path] = typer.Option([], help="Calibration photos for TFLite int8 (repeatable; folders are searched recursively). Default: Grocery Store train photos when present."),
    calib_max: int = typer.Option(64, help="Use at most this many calibration photos (evenly sampled)."),
    out: Path = typer.Option(Path("mobile_assets/yolov8n"), help="Bundle directory (manifest.json, artifacts, parity reports)."),
    conf: float = typer.Option(0.25, min=0.0, max=1.0, help="Default confidence threshold written to the manifest (and the CoreML NMS stage)."),
    iou: float = typer.Option(0.45, min=0.0, max=1.0, help="Default NMS IoU threshold written to the manifest (and the CoreML NMS stage)."),
    max_det: int = typer.Option(300, min=1, help="Default maximum detections per image."),
    coreml_nms: bool = typer.Option(True, "--coreml-nms/--no-coreml-nms", help="CoreML as the Vision pipeline with Apple's NMS (boxes + confidences out)."),
    eval_labelled: list[Path] = typer.Option([], help="Labelled YOLO images for mAP50 (images/ + labels/). Default: coco8."),
    eval_extra: list[Path] = typer.Option([], help="Unlabelled photos for agreement. Default: Grocery Store val photos."),
    eval_extra_max: int = typer.Option(56, help="Use at most this many extra photos per folder (evenly sampled)."),
    score_tolerance: float = typer.Option(0.05, min=0.0, max=0.5, help="Agreement: a detection counts as reproduced if the other side scores it >= threshold - this (strict rates are reported too)."),
    gate: list[str] = typer.Option([], help="Override a parity threshold for every precision, e.g. --gate match_rate_min=0.85 (keys: match_rate_min, score_mae_max, map50_drop_max)."),
    name: Optional[str] = typer.Option(None, help="Bundle name in the manifest (default: the --out folder name)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each step."),
) -> None:
    """Convert a YOLO detector for phones and prove it: TFLite/CoreML artifacts, manifest, parity reports.

    Exits 1 when an artifact fails the parity gate (it is kept, marked publishable=false).
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    from shoplens.converters.detector.convert import DetectorConvertOptions, convert_detector, summarize
    from shoplens.converters.common.errors import ConversionError

    opts = DetectorConvertOptions(
        weights=weights,
        out=out,
        imgsz=imgsz,
        targets=_csv(targets),
        precisions=_csv(precision),
        calib=list(calib),
        calib_max=calib_max,
        conf=conf,
        iou=iou,
        max_det=max_det,
        coreml_nms=coreml_nms,
        eval_labelled=list(eval_labelled),
        eval_extra=list(eval_extra),
        eval_extra_max=eval_extra_max,
        score_tolerance=score_tolerance,
        thresholds=_parse_thresholds(gate),
        name=name,
    )
    try:
        result = convert_detector(opts)
    except (ConversionError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    table = Table(title=f"detector bundle {result.bundle_dir}")
    for col in ("file", "precision", "MB", "match", "match >=0.5", "score MAE", "mAP50", "mAP50 ref", "gate"):
        table.add_column(col)
    for row in summarize(result):
        gate_txt = "[green]pass[/]" if row["passed"] else f"[bold red]FAIL[/] {row['failures']}"
        table.add_row(str(row["file"]), str(row["precision"]), f"{row['size_mb']:.2f}", f"{row['match_rate']:.3f}",
                      f"{row['match_rate_confident']:.3f}", f"{row['score_mae']:.4f}", str(row["map50"]), str(row["map50_ref"]), gate_txt)
    console.print(table)
    for s in result.skipped:
        console.print(f"[yellow]skipped[/] {s}")
    if not result.passed:
        console.print("[bold red]parity gate failed[/]: see the *.parity.md reports; failing artifacts are publishable=false")
        raise typer.Exit(1)


def register(convert_app: typer.Typer, root_app: typer.Typer) -> None:
    """Mount ``shoplens convert detector`` and ``shoplens detector train`` (train_cli.py)."""
    from shoplens.converters.detector.train_cli import detector_app

    convert_app.command("detector")(detector_command)
    root_app.add_typer(detector_app, name="detector")
