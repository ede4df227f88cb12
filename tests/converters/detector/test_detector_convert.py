"""A real yolov8n conversion (TFLite int8 + CoreML int8 NMS pipeline at 320) with the parity gate, converted once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shoplens.contract.manifest import ArtifactFormat, OutputRole, Precision, load_manifest, verify_bundle

pytestmark = pytest.mark.slow

IMGSZ = 320


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory, yolov8n_path: Path, coco8_dir: Path, grocery_dir: Path):
    from shoplens.converters.detector.convert import DetectorConvertOptions, convert_detector

    out = tmp_path_factory.mktemp("det") / "yolov8n"
    opts = DetectorConvertOptions(
        weights=yolov8n_path,
        out=out,
        imgsz=IMGSZ,
        targets=["tflite", "coreml"],
        precisions=["int8"],
        calib=[grocery_dir / "train"],
        calib_max=48,
        eval_labelled=[coco8_dir / "images"],
        eval_extra=[grocery_dir / "val"],
        eval_extra_max=6,
    )
    return convert_detector(opts)


def test_bundle_manifest_is_complete_and_verifiable(bundle, yolov8n_path: Path) -> None:
    from shoplens.contract.model_id import sha256_file

    m = verify_bundle(bundle.bundle_dir)  # every artifact present with its size and sha256
    assert m == load_manifest(bundle.bundle_dir)
    assert m.source.weights_sha256 == sha256_file(yolov8n_path)
    assert m.source.license and m.source.license.startswith("AGPL-3.0")  # the checkpoint's own declaration travels with it
    assert m.source.training is None  # the official COCO checkpoint records no training run
    assert m.detector is not None and m.detector.boxes_normalized
    assert len(m.detector.class_names) == 80 and m.detector.class_names[0] == "person"
    assert (m.detector.conf_threshold, m.detector.iou_threshold) == (0.25, 0.45)
    for tool in ("ultralytics", "torch", "coremltools", "litert-torch", "ai-edge-litert"):
        assert m.tools.get(tool), tool

    tfl = m.artifact(ArtifactFormat.TFLITE, Precision.INT8)
    assert tfl.input.shape == [1, 3, IMGSZ, IMGSZ] and tfl.input.layout.value == "NCHW"
    assert tfl.input.dtype.value == "float32" and tfl.input.scale == pytest.approx(1 / 255)
    assert tfl.input.resize.value == "letterbox" and tfl.input.pad_value == 114
    raw = tfl.output(OutputRole.YOLO_RAW)
    assert raw.shape == [1, 84, (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2]
    assert tfl.size_bytes < 3.6e6  # int8 weights: ~4x smaller than the 12.8 MB fp32 file

    cml = m.artifact(ArtifactFormat.COREML, Precision.INT8)
    assert cml.file.endswith("_nms.mlpackage")
    assert {o.role for o in cml.outputs} == {OutputRole.BOXES, OutputRole.SCORES}
    assert cml.input.scale == 1.0  # CVPixelBuffer 0-255; the program scales


def test_parity_gate_passes_with_real_numbers(bundle) -> None:
    assert bundle.passed, [(r.name, r.failures) for r in bundle.results]
    m = load_manifest(bundle.bundle_dir)
    for a in m.artifacts:
        assert a.publishable and a.parity is not None and a.parity.passed
        met = a.parity.metrics
        assert met["ref_detections"] >= 20  # the photos contain objects: agreement is not vacuous
        assert met["match_rate"] >= 0.85
        assert met["map50_reference"] > 0.5
        assert met["map50_drop"] <= 0.05
        assert met["match_rate_strict"] <= met["match_rate"] and met["score_tolerance"] == 0.05
        report = json.loads((bundle.bundle_dir / a.parity.report).read_text())
        assert report["passed"] and len(report["per_image"]) == int(met["images"])
        if a.format is ArtifactFormat.COREML:  # Core ML itself runs only on macOS; the report says which happened
            native = report["context"]["mlmodel_predict"]
            if sys.platform == "darwin":
                assert native["passed"] and native["metrics"]["match_rate"] >= 0.85, native
            else:
                assert native.startswith("not run: Core ML executes models only on macOS")
        assert (bundle.bundle_dir / a.parity.report.replace(".json", ".md")).is_file()


def test_coreml_spec_check_and_anchor_repair(bundle) -> None:
    """The NMS pipeline is wired for Vision, and only conv weights are int8 (the anchor grid stays exact fp16)."""
    from shoplens.converters.detector.coreml import check_coreml_spec
    from shoplens.converters.common.mil_eval import MILEvaluator

    m = load_manifest(bundle.bundle_dir)
    path = bundle.bundle_dir / m.artifact(ArtifactFormat.COREML, Precision.INT8).file
    names = m.detector.class_names
    ok = check_coreml_spec(path, imgsz=IMGSZ, class_names=names, precision=Precision.INT8, nms=True, conf=0.25, iou=0.45)
    assert ok.passed, ok.problems
    assert ok.facts["pipeline"] == ["mlProgram", "nonMaximumSuppression"]
    assert ok.facts["weights"]["conv"].get("int8", 0) >= 60
    assert all("int8" not in v and "palettized" not in v for k, v in ok.facts["weights"].items() if k != "conv")
    wrong = check_coreml_spec(path, imgsz=640, class_names=names, precision=Precision.FP16, nms=False, conf=0.3, iou=0.45)
    joined = " ".join(wrong.problems)
    assert "expected 640x640" in joined and "expected an ML program" in joined and "fp16 requested" in joined

    ev = MILEvaluator.from_mlpackage(path)
    anchors = [v for k, v in ev._consts.items() if v.shape == (1, 2, (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2)]
    assert anchors, "anchor grid constant not found"
    xs = anchors[0][0, 0, : IMGSZ // 8]
    np.testing.assert_array_equal(xs, np.arange(IMGSZ // 8) + 0.5)


def test_int8_tflite_runs_through_the_sdk_decoder(bundle, coco8_dir: Path) -> None:
    """The manifest alone is enough to run the artifact: preprocess, invoke, decode."""
    from ai_edge_litert.interpreter import Interpreter

    from shoplens.sdk.images import load_rgb
    from shoplens.sdk.tensors import prepare_input
    from shoplens.sdk.yolo_decode import decode_with_manifest

    m = load_manifest(bundle.bundle_dir)
    a = m.artifact(ArtifactFormat.TFLITE, Precision.INT8)
    it = Interpreter(model_path=str(bundle.bundle_dir / a.file), num_threads=2)
    it.allocate_tensors()
    rgb = load_rgb(coco8_dir / "images" / "val" / "000000000049.jpg")  # people and horses
    x, geo = prepare_input(rgb, a.input)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    det = decode_with_manifest(it.get_tensor(it.get_output_details()[0]["index"]), geo, m.detector, a.output(OutputRole.YOLO_RAW))
    labels = {d["label"] for d in det.labelled(m.detector.class_names)}
    assert {"person", "horse"} <= labels
    assert (det.boxes[:, 2] <= rgb.shape[1]).all() and (det.boxes[:, 3] <= rgb.shape[0]).all()


def test_cli_usage_errors_and_gate_exit_code(monkeypatch: pytest.MonkeyPatch, bundle) -> None:
    from shoplens.cli import app
    from shoplens.converters.detector import convert as detector_mod

    runner = CliRunner()
    res = runner.invoke(app, ["convert", "detector", "--targets", "coreml", "--precision", "w8a32", "--out", "/tmp/x"])
    assert res.exit_code == 2 and "not offered" in res.output
    res = runner.invoke(app, ["convert", "detector", "--gate", "nonsense"])
    assert res.exit_code != 0

    captured = {}

    def fake_convert(opts):
        captured["opts"] = opts
        bundle.results[0].passed = False  # a failed gate must surface as exit 1
        return bundle

    monkeypatch.setattr(detector_mod, "convert_detector", fake_convert)
    try:
        res = runner.invoke(app, ["convert", "detector", "--imgsz", "320", "--precision", "int8", "--gate", "match_rate_min=0.5", "--out", str(bundle.bundle_dir)])
    finally:
        bundle.results[0].passed = True
    assert res.exit_code == 1, res.output
    assert captured["opts"].thresholds == {"match_rate_min": 0.5} and captured["opts"].imgsz == 320
    assert "parity gate failed" in res.output


def test_int8_tflite_keeps_only_the_first_convolution_float(bundle) -> None:
    """The int8 file's one float convolution is model.0; every other convolution has int8 weights."""
    from ai_edge_litert.interpreter import Interpreter

    m = load_manifest(bundle.bundle_dir)
    it = Interpreter(model_path=str(bundle.bundle_dir / m.artifact(ArtifactFormat.TFLITE, Precision.INT8).file))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    convs = [op for op in it._get_ops_details() if op["op_name"] == "CONV_2D"]
    weight_types = [(tensors[op["inputs"][1]]["name"], tensors[op["inputs"][1]]["dtype"]) for op in convs]
    float_convs = [name for name, dtype in weight_types if dtype != np.int8]
    assert len(float_convs) == 1 and "Conv_0/" in float_convs[0], float_convs
    assert len(weight_types) >= 60


def test_gate_runs_the_manifest_so_a_wrong_input_spec_fails_it(bundle, yolov8n_path: Path, coco8_dir: Path, tmp_path: Path) -> None:
    """The gate runs the TFLite artifact in the SDK's Detector from its manifest entry: a wrong scale or size fails it."""
    import shutil

    from shoplens.contract.manifest import InputSpec, save_manifest
    from shoplens.converters.detector.parity import ParityRun, load_eval_set, thresholds_for
    from shoplens.converters.detector.reference import load_torch_detector
    from shoplens.converters.detector.runners import SDKPredictor, TorchPredictor

    evalset = load_eval_set([coco8_dir / "images" / "val"], [], 0)
    parity = ParityRun(evalset, TorchPredictor(load_torch_detector(yolov8n_path), IMGSZ), 0.25, 0.45)
    m = load_manifest(bundle.bundle_dir)
    right = m.artifact(ArtifactFormat.TFLITE, Precision.INT8)
    shutil.copy(bundle.bundle_dir / right.file, tmp_path / right.file)
    gate = thresholds_for(Precision.INT8)
    runs = {}
    for name, change in (("as converted", {}), ("scale", {"scale": 1.0}), ("size", {"shape": [1, 3, 2 * IMGSZ, 2 * IMGSZ]})):
        entry = right.model_copy(update={"input": InputSpec.model_validate({**right.input.model_dump(), **change})})
        m.artifacts = [entry]
        save_manifest(m, tmp_path)
        runs[name] = parity.judge(entry.file, Precision.INT8, SDKPredictor(tmp_path, Precision.INT8), gate)
    assert runs["as converted"].metrics["match_rate"] >= 0.8, runs["as converted"].metrics
    assert not runs["scale"].passed and runs["scale"].metrics["match_rate"] < 0.5, runs["scale"].metrics
    assert not runs["size"].passed and "runtime" in runs["size"].failures[0], runs["size"].failures
