"""TFLite helpers: calibration inputs, fp16 weight casting, the int8 calibration repair, the precision plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shoplens.contract.manifest import ArtifactFormat, Precision
from shoplens.converters.common.errors import ConversionError
from shoplens.converters.detector.tflite import (
    _fp16_from_fp32,
    FIRST_CONV_FLOAT_REGEX,
    _global_min_max,
    _int8_policy,
    collect_images,
    decode_tail_tensors,
    tflite_io_specs,
    write_calibration_yaml,
)


def test_collect_images_samples_evenly(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / "a" / f"{i:02d}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "a" / f"{i:02d}.jpg").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    got = collect_images([tmp_path / "a"], limit=5)
    assert [p.name for p in got] == ["00.jpg", "02.jpg", "04.jpg", "06.jpg", "08.jpg"]
    assert len(collect_images([tmp_path / "a"], limit=0)) == 10
    with pytest.raises(FileNotFoundError):
        collect_images([tmp_path / "missing"], limit=3)


def test_calibration_yaml_links_images_and_never_downloads(tmp_path: Path) -> None:
    img = tmp_path / "photos" / "p.JPG"
    img.parent.mkdir()
    img.write_bytes(b"x")
    yaml = write_calibration_yaml([img], tmp_path / "work", ['a "quoted" name', "b"])
    text = yaml.read_text()
    assert "download" not in text and "val: calibration" in text
    assert '0: "a \\"quoted\\" name"' in text
    link = tmp_path / "work" / "calibration" / "00000.jpg"
    assert link.is_symlink() and link.resolve() == img.resolve()
    with pytest.raises(ConversionError, match="--calib"):
        write_calibration_yaml([], tmp_path / "work2", ["a"])


HEAD = "ultralytics.utils.export.engine._NormalizeCoords/ultralytics.nn.tasks.DetectionModel_model/ultralytics.nn.modules.head.Detect_22;15"
NECK = "ultralytics.utils.export.engine._NormalizeCoords/ultralytics.nn.tasks.DetectionModel_model/ultralytics.nn.modules.block.C2f_15/x"
STEM = "ultralytics.utils.export.engine._NormalizeCoords/ultralytics.nn.tasks.DetectionModel_model/ultralytics.nn.modules.conv.Conv_0/torch.nn.modules.conv.Conv2d_conv;4"


def test_only_the_first_module_is_kept_float() -> None:
    import re

    assert re.fullmatch(FIRST_CONV_FLOAT_REGEX, STEM)
    for other in (NECK, HEAD, STEM.replace("Conv_0", "Conv_10"), STEM.replace("Conv_0", "Conv_1"),
                  HEAD.replace(";15", "/torch.nn.modules.container.Sequential_1/ultralytics.nn.modules.conv.Conv_0/x;2")):
        assert not re.fullmatch(FIRST_CONV_FLOAT_REGEX, other), other


def test_decode_tail_is_found_by_walking_a_real_yolo_graph(tmp_path: Path, yolov8n_path: Path) -> None:
    """From the output back to the head's last box and class convolutions, through the DFL; nothing before them."""
    from shoplens.converters.detector.tflite import export_tflite

    fp32 = export_tflite(yolov8n_path, 64, Precision.FP32, tmp_path / "fp32").path
    tail = decode_tail_tensors(fp32.read_bytes())
    assert any("DFL" in n for n in tail) and any("_NormalizeCoords;" in n for n in tail)
    convs = [n for n in tail if "Conv2d_2" in n]  # the last conv of each of 3 levels x (box, class)
    assert 6 <= len(convs) <= 12, convs
    assert not any("C2f_" in n or "SiLU" in n for n in tail)  # the head's inner layers and the neck are outside
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(fp32))
    assert it.get_output_details()[0]["name"] in tail
    torch = pytest.importorskip("torch")
    not_yolo = _tiny_tflite(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.SiLU()), torch.rand(1, 3, 8, 8), tmp_path / "tiny.tflite")
    with pytest.raises(ConversionError, match="decode tail"):
        decode_tail_tensors(not_yolo.read_bytes())


def _tiny_tflite(net, x, path: Path) -> Path:
    """A real (non-YOLO) float TFLite file of ``net`` traced at ``x``."""
    litert_torch = pytest.importorskip("litert_torch")
    litert_torch.convert(net.eval(), (x,)).export(str(path))
    return path


def test_tail_takes_the_global_min_max_and_the_rest_the_mean_in_any_order() -> None:
    """The repair that keeps confident int8 scores from being clipped at 0.5, confined to the decode tail.

    Runs ai-edge-quantizer's real Calibrator method under the patch; both merges must not depend
    on the order of the calibration images (ultralytics shuffles them with an unseeded generator).
    """
    from ai_edge_quantizer import calibrator, quantizer

    merged = _global_min_max({"min": np.array([-1.0]), "max": np.array([0.1])}, {"min": np.array([-3.0]), "max": np.array([2.0])})
    assert merged["min"][0] == -3.0 and merged["max"][0] == 2.0

    images = [(-1.0, 1.0), (-3.0, 0.0), (-2.0, 4.0)]

    def calibrate(order: list[tuple[float, float]]) -> dict:
        cal = object.__new__(calibrator.Calibrator)  # no model needed: only its statistics merge runs
        cal._model_qsvs = {}
        with _int8_policy(global_tensors={HEAD}):
            for lo, hi in order:
                qsv = {"min": np.array([lo], np.float32), "max": np.array([hi], np.float32)}
                assert cal._update_qsvs({HEAD: dict(qsv), NECK: dict(qsv)}, set(), None) == {HEAD, NECK}
                assert cal._update_qsvs({NECK: dict(qsv)}, {NECK}, None) == set()  # already updated this pass
        return cal._model_qsvs

    originals = (calibrator.Calibrator._update_qsvs, quantizer.Quantizer.calibrate, quantizer.Quantizer.load_quantization_recipe)
    for order in (images, images[::-1], images[1:] + images[:1]):
        got = calibrate(order)
        assert got[HEAD]["min"][0] == -3.0 and got[HEAD]["max"][0] == 4.0  # global
        assert got[NECK]["min"][0] == pytest.approx(-2.0) and got[NECK]["max"][0] == pytest.approx(5 / 3)  # mean
    # real-looking float32 statistics: every order gives the very same scales (float32 sums did not)
    rng = np.random.default_rng(0)
    many = [(float(lo), float(hi)) for lo, hi in zip(rng.normal(-3, 1, 64).astype(np.float32), rng.normal(5, 2, 64).astype(np.float32))]
    results = [calibrate([many[i] for i in rng.permutation(64)])[NECK] for _ in range(3)]
    assert all(r["min"].tobytes() == results[0]["min"].tobytes() and r["max"].tobytes() == results[0]["max"].tobytes()
               for r in results)
    assert (calibrator.Calibrator._update_qsvs, quantizer.Quantizer.calibrate, quantizer.Quantizer.load_quantization_recipe) == originals


def test_fp16_weight_casting_halves_a_real_tflite(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(64, 64, 3, padding=1)).eval()
    x = torch.rand(1, 3, 32, 32)
    fp32 = _tiny_tflite(net, x, tmp_path / "tiny.tflite")
    out = _fp16_from_fp32(fp32, tmp_path / "work")
    assert out.precision is Precision.FP16 and out.format is ArtifactFormat.TFLITE
    assert out.path.stat().st_size < 0.6 * fp32.stat().st_size
    inp, outs = tflite_io_specs(out.path)
    assert inp.shape == [1, 3, 32, 32] and inp.dtype.value == "float32" and outs[0].shape == [1, 64, 32, 32]

    from ai_edge_litert.interpreter import Interpreter

    def run(path: Path) -> np.ndarray:
        it = Interpreter(model_path=str(path))
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x.numpy())
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])

    ref = net(x).detach().numpy()
    np.testing.assert_allclose(run(fp32), ref, atol=1e-4)
    half = run(out.path)
    assert np.abs(half - ref).max() < 0.02 and not np.array_equal(half, run(fp32))


def test_precision_plan_per_target() -> None:
    from shoplens.converters.detector.convert import DetectorConvertOptions, _plan

    plan, skipped = _plan(DetectorConvertOptions(targets=["tflite", "coreml"], precisions=["tflite:fp16", "w8a32", "coreml:int8"]))
    assert plan == [(ArtifactFormat.COREML, Precision.INT8), (ArtifactFormat.TFLITE, Precision.W8A32), (ArtifactFormat.TFLITE, Precision.FP16)]
    assert skipped == ["coreml/w8a32: not offered (offered: fp32, fp16, int8)"]


def test_weights_resolution_offline_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoplens.converters.detector.reference import resolve_weights
    from shoplens.resources import ResourceNotFound

    monkeypatch.setenv("SHOPLENS_OFFLINE", "1")
    with pytest.raises(ResourceNotFound, match="Offline: yolo11x_not_here.pt cannot be downloaded"):
        resolve_weights("yolo11x_not_here.pt")
    with pytest.raises(ResourceNotFound):
        resolve_weights(tmp_path / "missing.pt")
    local = tmp_path / "mine.pt"
    local.write_bytes(b"x")
    assert resolve_weights(local) == local
