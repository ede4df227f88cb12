"""Detector conversion benchmark: every target x precision, measured (not quoted).

For each artifact: size, conversion time, agreement with PyTorch fp32 (match
rate at IoU 0.5 same class, score MAE), mAP50 on coco8, and for TFLite the
CPU latency of ``interpreter.invoke()`` (XNNPACK) at 1 and 2 threads for 320
and 640 inputs. Writes ``benchmarks/results/convert_detector.json`` (then run
``benchmarks/report.py`` to refresh docs/benchmarks.md).

Usage: .venv/bin/python benchmarks/convert_detector.py [--weights yolov8n.pt] [--sizes 320,640] [--runs 20] [--eval-extra-max 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402


def tflite_latency_ms(path: Path, threads: int, runs: int) -> float:
    """Median wall time of one invoke() on a fixed letterboxed-grey input, after 3 warm-ups."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.full(d["shape"], 114 / 255, np.float32))
    for _ in range(3):
        it.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.invoke()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def convert(weights: str, imgsz: int, targets: list[str], precisions: list[str], out: Path, eval_extra_max: int) -> Any:
    from shoplens.converters.detector.convert import DetectorConvertOptions, convert_detector

    return convert_detector(DetectorConvertOptions(weights=weights, out=out, imgsz=imgsz, targets=targets, precisions=precisions,
                                                   eval_extra_max=eval_extra_max))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="yolov8n.pt")
    ap.add_argument("--sizes", default="320,640", help="input sizes; the largest gets every target, the others TFLite only")
    ap.add_argument("--runs", type=int, default=20, help="timed invokes per latency cell")
    ap.add_argument("--eval-extra-max", type=int, default=200,
                    help="Grocery Store val photos beside coco8's 8 for agreement (200: ~1,140 reference boxes at 640, "
                         "+-0.006 on a 0.95 rate; the converter's own default, 56, gives +-0.01)")
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rows: list[dict[str, Any]] = []
    latency: dict[tuple[str, str, int], dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-detector-") as tmp:
        for imgsz in sizes:
            full = imgsz == sizes[-1]
            result = convert(args.weights, imgsz, ["tflite", "coreml"] if full else ["tflite"],
                             ["fp32", "fp16", "int8", "w8a32"], Path(tmp) / str(imgsz), args.eval_extra_max)
            by_file = {a.file: a for a in result.manifest.artifacts}
            for r in result.results:
                a = by_file[r.name]
                report = json.loads((result.bundle_dir / a.parity.report).read_text())
                if a.format.value == "tflite":
                    latency[(a.format.value, a.precision.value, imgsz)] = {
                        t: round(tflite_latency_ms(result.bundle_dir / a.file, t, args.runs), 2) for t in (1, 2)
                    }
                if not full and a.format.value != "tflite":
                    continue
                m = r.metrics
                rows.append({
                    "target": a.format.value,
                    "precision": a.precision.value,
                    "imgsz": imgsz,
                    "size_mb": round(a.size_bytes / 1e6, 2),
                    "convert_s": report["context"]["conversion_seconds"],
                    "match_rate": round(m["match_rate"], 4),
                    "match_rate_conf50": round(m["match_rate_confident"], 4),
                    "score_mae": round(m["score_mae"], 4),
                    "map50": round(m["map50"], 4),
                    "map50_fp32_torch": round(m["map50_reference"], 4),
                    "gate": "pass" if r.passed else "FAIL: " + "; ".join(r.failures),
                })
    for row in rows:
        for t in (1, 2):
            for s in sizes:
                lat = latency.get((row["target"], row["precision"], s))
                row[f"cpu_ms_{s}_t{t}"] = lat[t] if lat else None
    targets = []
    for target in ("tflite", "coreml"):
        r8 = next((r for r in rows if r["target"] == target and r["precision"] == "int8" and r["imgsz"] == sizes[-1]), None)
        if r8 is None:
            continue
        drop = round(r8["map50_fp32_torch"] - r8["map50"], 4)
        if target == "tflite":
            targets.append({"target": "YOLOv8n int8 TFLite size <= 3.5 MB", "measured": r8["size_mb"], "met": r8["size_mb"] <= 3.5})
        targets += [
            {"target": f"{target} int8 box agreement >= 0.95 (IoU 0.5, same class)", "measured": r8["match_rate"], "met": r8["match_rate"] >= 0.95},
            {"target": f"{target} int8 loses <= 1 point mAP50 vs fp32 (coco8)", "measured": drop, "met": drop <= 0.01},
        ]
    notes = [
        "agreement/mAP50 use the device SDK's letterbox and numpy decode/NMS on coco8 (8 labelled images) + "
        f"{args.eval_extra_max} Grocery Store val photos (--eval-extra-max); int8 calibrated on 64 Grocery Store train photos",
        "the converter's own 64-photo default set cannot resolve a point of agreement (int8 TFLite at 640 once moved 0.935-0.952 "
        "with activation-scale changes in the 7th significant digit; docs/converters.md); this set is ~3x larger; score_mae is the stable figure",
        "CoreML rows are measured by evaluating the ML program op by op in numpy (mil_eval), not on Apple hardware; "
        "CPU latency is TFLite only (LiteRT XNNPACK on this machine's CPU, median of --runs invokes)",
        "coco8 has 8 images: mAP50 differences of a point or two are within its noise",
        "convert_s of TFLite fp16 is the weight casting only (it reuses the fp32 export)",
        f"{os.cpu_count()} CPUs; 1-min load average {os.getloadavg()[0]:.1f} when the run ended (conversions in this run "
        "use both cores; the latency cells are timed one at a time)",
    ]
    write_result("convert_detector", rows, notes=notes, targets=targets)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
