"""``convert_detector``: an ultralytics checkpoint -> a bundle of TFLite/CoreML artifacts with a parity gate.

Order of work: resolve the weights (offline-safe), export each target x
precision in a private work folder, move the files into the bundle, record each
one's entry in ``manifest.json``, then measure parity against the PyTorch fp32
model by running the artifact as that entry describes it (the SDK's runtime,
preprocessing and decoding), and write one report per artifact. An artifact whose gate fails stays in the bundle with
``publishable=false`` so it can be inspected, and the result says so.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shoplens.contract.manifest import (
    ArtifactFormat,
    ArtifactManifest,
    BoxFormat,
    BundleManifest,
    DetectorSpec,
    Precision,
    SourceSpec,
    Task,
    artifact_sha256,
    artifact_size,
    load_manifest,
    save_manifest,
)
from shoplens.converters.common.errors import ConversionError
from shoplens.converters.common.plan import precision_plan
from shoplens.converters.common.result import ConvertResult, tool_versions
from shoplens.converters.detector.coreml import COREML_PRECISIONS, check_coreml_spec, coreml_io_specs, export_coreml
from shoplens.converters.detector.parity import SCORE_TOLERANCE, ArtifactResult, EvalSet, ParityRun, load_eval_set, thresholds_for, write_report
from shoplens.converters.detector.runners import MLModelPredictor, TorchPredictor, artifact_predictor, mlmodel_predict_available
from shoplens.converters.detector.tflite import TFLITE_PRECISIONS, Exported, collect_images, export_tflite, tflite_io_specs
from shoplens.converters.detector.reference import TorchDetector, load_torch_detector
from shoplens.resources import find_dataset, grocery_store
from shoplens.settings import get_settings

log = logging.getLogger("shoplens.converters.detector")

TOOL_PACKAGES = ("ultralytics", "torch", "coremltools", "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "numpy", "shoplens")


@dataclass
class DetectorConvertOptions:
    """Everything ``shoplens convert detector`` accepts; defaults build the standard yolov8n bundle."""

    weights: str | Path = "yolov8n.pt"
    out: Path = Path("mobile_assets/yolov8n")
    imgsz: int = 640
    targets: list[str] = field(default_factory=lambda: ["tflite", "coreml"])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "fp16", "int8"])
    calib: list[Path] = field(default_factory=list)
    calib_max: int = 64
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    coreml_nms: bool = True
    eval_labelled: list[Path] = field(default_factory=list)
    eval_extra: list[Path] = field(default_factory=list)
    eval_extra_max: int = 56  # with coco8's 8: 64 photos, ~400 reference boxes (16 photos gave ~76: one box = 1.3 points)
    score_tolerance: float = SCORE_TOLERANCE
    thresholds: dict[str, float] = field(default_factory=dict)  # overrides for every precision
    name: str | None = None


#: a checkpoint with this many classes is taken for a COCO detector, whose class ids coco8's labels use
COCO_CLASSES = 80


def default_eval_dirs(class_names: list[str] | None = None) -> tuple[list[Path], list[Path]]:
    """coco8 and Grocery Store val photos (products in scenes), when they are on this machine.

    coco8's labels are COCO class ids: they score mAP50 only for a COCO detector. For any other
    class list (the one-class "product" detector of ``shoplens detector train``) coco8's photos
    join the unlabelled agreement photos; pass ``--eval-labelled`` with the model's own
    labelled photos (its val scenes) for an mAP50.
    """
    labelled: list[Path] = []
    extra: list[Path] = []
    scene = find_dataset("scene_photos").path
    if scene is not None and (scene / "coco8" / "images").is_dir():
        coco = class_names is None or len(class_names) == COCO_CLASSES
        (labelled if coco else extra).append(scene / "coco8" / "images")
    grocery = grocery_store().path
    if grocery is not None and (grocery / "dataset" / "val").is_dir():
        extra.append(grocery / "dataset" / "val")
    return labelled, extra


def default_calib_dirs() -> list[Path]:
    """Grocery Store *train* photos: the app's domain, and disjoint from the evaluation photos."""
    grocery = grocery_store().path
    if grocery is not None and (grocery / "dataset" / "train").is_dir():
        return [grocery / "dataset" / "train"]
    return []


def _plan(opts: DetectorConvertOptions) -> tuple[list[tuple[ArtifactFormat, Precision]], list[str]]:
    offered = {ArtifactFormat.TFLITE: TFLITE_PRECISIONS, ArtifactFormat.COREML: COREML_PRECISIONS}
    plan, skipped = precision_plan(opts.targets, opts.precisions, offered)
    # fp16 TFLite is derived from fp32: convert fp32 first (it is then kept only if requested)
    plan.sort(key=lambda fp: (fp[0].value, fp[1] is Precision.FP16))
    return plan, skipped


def convert_detector(opts: DetectorConvertOptions) -> ConvertResult:
    """Convert, gate and write the bundle; never raises for a failed gate (see ``ConvertResult.passed``)."""
    plan, skipped = _plan(opts)
    if not plan:
        raise ConversionError("nothing to convert: " + "; ".join(skipped))
    if any(f is ArtifactFormat.COREML for f, _ in plan) and any(f is ArtifactFormat.TFLITE for f, _ in plan) and not opts.coreml_nms:
        raise ConversionError(
            "CoreML without NMS outputs boxes in input pixels while TFLite outputs them normalised 0-1; "
            "a bundle has one box convention, so convert them into separate bundles (or keep --coreml-nms)"
        )
    ref = load_torch_detector(opts.weights)
    boxes_normalized = any(f is ArtifactFormat.TFLITE for f, _ in plan) or opts.coreml_nms
    bundle = Path(opts.out)
    bundle.mkdir(parents=True, exist_ok=True)
    manifest = _start_manifest(bundle, opts, ref, boxes_normalized)

    labelled, extra = (opts.eval_labelled, opts.eval_extra) if (opts.eval_labelled or opts.eval_extra) else default_eval_dirs(ref.class_names)
    evalset = load_eval_set(labelled, extra, opts.eval_extra_max)
    parity = ParityRun(evalset, TorchPredictor(ref, opts.imgsz), opts.conf, opts.iou, opts.score_tolerance)
    calib_dirs = opts.calib or default_calib_dirs()
    needs_calib = any(f is ArtifactFormat.TFLITE and p is Precision.INT8 for f, p in plan)
    calib_images = collect_images(calib_dirs, opts.calib_max) if needs_calib else []
    if needs_calib and not calib_images:
        raise ConversionError("TFLite int8 needs calibration photos: pass --calib DIR (photos like the app will see)")

    work = Path(tempfile.mkdtemp(prefix="detector-", dir=_work_root()))
    results: list[ArtifactResult] = []
    try:
        fp32_tflite: Path | None = None
        requested = set(plan)
        for fmt, prec in plan:
            if fmt is ArtifactFormat.TFLITE:
                if prec is Precision.FP16 and fp32_tflite is None:  # fp16 is derived from an fp32 export
                    fp32_tflite = export_tflite(ref.weights, opts.imgsz, Precision.FP32, work / "fp32").path
                exported = export_tflite(ref.weights, opts.imgsz, prec, work / "tflite", calib_images, fp32_file=fp32_tflite)
                if prec is Precision.FP32:  # keep a copy: the export itself moves into the bundle below
                    fp32_tflite = work / "fp32" / f"{ref.weights.stem}.tflite"
                    fp32_tflite.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(exported.path, fp32_tflite)
            else:
                exported = export_coreml(ref.weights, opts.imgsz, prec, work / "coreml", nms=opts.coreml_nms, conf=opts.conf, iou=opts.iou)
            if (fmt, prec) not in requested:
                continue
            entry, result = _finish_artifact(exported, bundle, manifest, ref, opts, parity, evalset, calib_images)
            manifest.upsert_artifact(entry)
            results.append(result)
            save_manifest(manifest, bundle)  # after each artifact: a crash later keeps the finished ones
            log.info("%s %s: %s", fmt.value, prec.value, "PASS" if result.passed else "FAIL " + "; ".join(result.failures))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ConvertResult(manifest, bundle, results, skipped)


def _work_root() -> Path:
    root = get_settings().cache_dir / "convert"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _start_manifest(bundle: Path, opts: DetectorConvertOptions, ref: TorchDetector, boxes_normalized: bool) -> BundleManifest:
    """Reuse the bundle's manifest when it describes the same weights and decoding; else start fresh.

    The detector section carries the object-choice rule (``object_choice``): the defaults the
    benchmark chose for a new bundle, or the rule an existing bundle's manifest already holds
    (someone tuned it for these weights; reconverting must not reset it). A new bundle ignores
    only labels its detector has (a one-class "product" model has no "person" to ignore).
    """
    source = SourceSpec(name=ref.weights.stem, weights=ref.weights.name, weights_sha256=ref.weights_sha256, license=ref.license, training=ref.training)
    detector = DetectorSpec(
        class_names=ref.class_names,
        box_format=BoxFormat.XYWH_CENTER,
        boxes_normalized=boxes_normalized,
        conf_threshold=opts.conf,
        iou_threshold=opts.iou,
        max_detections=opts.max_det,
    )
    detector.object_choice.ignore_labels = [label for label in detector.object_choice.ignore_labels if label in ref.class_names]
    if (bundle / "manifest.json").is_file():
        try:
            old = load_manifest(bundle)
        except Exception:  # noqa: BLE001 - an unreadable old manifest is simply replaced
            old = None
        if old is not None and old.detector is not None:
            detector.object_choice = old.detector.object_choice
        if old is not None and old.source == source and old.detector == detector:
            old.tools = tool_versions(TOOL_PACKAGES)
            return old
    return BundleManifest(name=opts.name or bundle.name, task=Task.DETECTOR, source=source, tools=tool_versions(TOOL_PACKAGES), detector=detector)


def _finish_artifact(
    exported: Exported,
    bundle: Path,
    manifest: BundleManifest,
    ref: TorchDetector,
    opts: DetectorConvertOptions,
    parity: ParityRun,
    evalset: EvalSet,
    calib_images: list[Path],
) -> tuple[ArtifactManifest, ArtifactResult]:
    """Move the file into the bundle, record its manifest entry, run the gate through it, write the report."""
    nms = exported.format is ArtifactFormat.COREML and opts.coreml_nms
    stem = f"{ref.weights.stem}_{exported.precision.value}{'_nms' if nms else ''}"
    dest = bundle / f"{stem}{'.tflite' if exported.format is ArtifactFormat.TFLITE else '.mlpackage'}"
    if dest.is_dir():
        shutil.rmtree(dest)
    elif dest.exists():
        dest.unlink()
    shutil.move(str(exported.path), dest)

    context: dict[str, object] = {
        "weights": ref.weights.name,
        "imgsz": opts.imgsz,
        "conversion_seconds": round(exported.seconds, 2),
        "eval_images": evalset.describe(),
        "calibration_images": len(calib_images) if exported.precision is Precision.INT8 and exported.format is ArtifactFormat.TFLITE else 0,
        "default_thresholds": {"conf": opts.conf, "iou": opts.iou},
    }
    spec_problems: list[str] = []
    if exported.format is ArtifactFormat.TFLITE:
        inp, outs = tflite_io_specs(dest)
        method = f"shoplens.sdk.runtime.Detector (LiteRT, XNNPACK CPU) configured by the manifest vs PyTorch fp32 on {evalset.describe()}; SDK letterbox + numpy decode/NMS"
    else:
        chk = check_coreml_spec(dest, imgsz=opts.imgsz, class_names=ref.class_names, precision=exported.precision, nms=nms, conf=opts.conf, iou=opts.iou)
        context["coreml_spec"] = chk.facts
        spec_problems = [f"spec: {p}" for p in chk.problems]
        inp, outs = coreml_io_specs(dest, imgsz=opts.imgsz, nms=nms, num_classes=ref.num_classes)
        method = (
            f"CoreML spec check + op-by-op numpy evaluation of the ML program (mil_eval, fp16 rounding emulated"
            f"{', NMS stage emulated by the SDK decoder' if nms else ''}) on inputs prepared from the manifest, vs PyTorch fp32 "
            f"on {evalset.describe()}; checks the graph's arithmetic, not the Neural Engine's exact numbers"
        )
    context["method"] = method
    entry = ArtifactManifest(
        file=dest.name, format=exported.format, precision=exported.precision, sha256=artifact_sha256(dest), size_bytes=artifact_size(dest),
        input=inp, outputs=outs, parity=None, publishable=False, notes=f"{exported.notes}; converted in {exported.seconds:.1f} s",
    )
    manifest.upsert_artifact(entry)
    save_manifest(manifest, bundle)  # the gate runs the artifact as this manifest describes it
    result = _judge(bundle, entry, ref, nms, parity, thresholds_for(exported.precision, opts.thresholds), context)
    if spec_problems:
        result.failures = spec_problems + result.failures
        result.passed = False
    report = write_report(result, bundle, stem, context)
    entry = entry.model_copy(update={"parity": result.summary(report, method), "publishable": result.passed})
    return entry, result


def _judge(bundle: Path, entry: ArtifactManifest, ref: TorchDetector, nms: bool, parity: ParityRun, thresholds: dict[str, float],
           context: dict[str, object]) -> ArtifactResult:
    """The gate on the artifact as the manifest entry describes it (plus Core ML itself where it runs)."""
    result = parity.judge(entry.file, entry.precision, artifact_predictor(bundle, entry.format, entry.precision, ref.num_classes, nms), thresholds)
    if entry.format is not ArtifactFormat.COREML:
        return result
    if not mlmodel_predict_available():
        context["mlmodel_predict"] = "not run: Core ML executes models only on macOS (rerun the convert command there)"
        return result
    native = parity.judge(entry.file, entry.precision, MLModelPredictor(bundle / entry.file, entry.input, ref.num_classes, nms=nms), thresholds)
    context["mlmodel_predict"] = {"passed": native.passed, "failures": native.failures, "metrics": native.metrics}
    if not native.passed:
        result.failures += [f"MLModel.predict: {f}" for f in native.failures]
        result.passed = False
    return result


def summarize(result: ConvertResult) -> list[dict[str, object]]:
    """One row per artifact for the CLI/benchmark tables."""
    rows = []
    nan = float("nan")  # an artifact the runtime could not run has no metrics
    by_file = {a.file: a for a in result.manifest.artifacts}
    for r in result.results:
        a = by_file[r.name]
        m = r.metrics
        rows.append(
            {
                "file": r.name,
                "precision": r.precision,
                "size_mb": round(a.size_bytes / 1e6, 2),
                "match_rate": round(m.get("match_rate", nan), 4),
                "match_rate_confident": round(m.get("match_rate_confident", nan), 4),
                "score_mae": round(m.get("score_mae", nan), 4),
                "map50": round(m["map50"], 4) if np.isfinite(m.get("map50", nan)) else None,
                "map50_ref": round(m["map50_reference"], 4) if np.isfinite(m.get("map50_reference", nan)) else None,
                "passed": r.passed,
                "failures": "; ".join(r.failures),
            }
        )
    return rows
