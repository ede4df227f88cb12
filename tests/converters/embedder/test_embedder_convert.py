"""Real conversions of a small embedder (ResNet50-V2 s3 at 64 px) to TFLite and CoreML, with the parity gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from shoplens.contract.manifest import ArtifactFormat, OutputRole, Precision, verify_bundle
from shoplens.contract.model_id import compute_model_id, sha256_file
from shoplens.converters.embedder.convert import EmbedderConvertOptions, ParityData, convert_embedder
from shoplens.converters.embedder.data import load_catalog
from shoplens.converters.embedder.head import fit_head
from shoplens.converters.embedder.model import EmbedderConfig, build_embedder, save_checkpoint
from shoplens.converters.embedder.parity import measure
from shoplens.converters.embedder.trunks import TRUNKS

SIZE, DIM = 64, 32


@pytest.fixture(scope="module")
def small_checkpoint(grocery_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    cat = load_catalog(grocery_dir)
    model = build_embedder(EmbedderConfig(input_size=SIZE, dim=DIM))
    fit_head(model, [s.path for s in cat.split("train")[::40]])  # 66 photos
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "small.pt")


@pytest.fixture(scope="module")
def parity_data(grocery_dir: Path) -> ParityData:
    data = ParityData.from_catalog(grocery_dir, max_photos=24, max_catalog_photos=40)
    data.queries = data.queries[:40]  # 24 val photos + 16 iconic images
    return data


@pytest.fixture(scope="module")
def bundle(small_checkpoint: Path, parity_data: ParityData, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("bundle") / "small-embedder"
    return convert_embedder(EmbedderConvertOptions(
        small_checkpoint, out, parity_data, targets=["tflite", "coreml"], precisions=["tflite:fp32", "tflite:fp16", "int8"], calib_count=64, coreml_parity_images=8
    ))


def test_tflite_fp32_and_int8_agree_with_pytorch(bundle, small_checkpoint: Path) -> None:
    by = {r.artifact: r for r in bundle.results}
    fp32 = by["embedder_fp32.tflite"].metrics
    assert fp32["cos_min"] > 0.9999 and fp32["top10_overlap"] > 0.99
    assert by["embedder_fp32.tflite"].passed
    int8 = by["embedder_int8.tflite"].metrics
    assert int8["cos_mean"] > 0.93, int8  # static int8 at 64 px with a PCA head; the shipped model is gated at 0.99
    assert abs(int8["recall@1"] - int8["ref_recall@1"]) <= 0.15
    assert fp32["images"] == 40 and fp32["retrieval_queries"] == 24
    fp16 = by["embedder_fp16.tflite"]  # float16 weights, float32 arithmetic: near-identical, half the file
    assert fp16.passed and fp16.metrics["cos_min"] > 0.999
    sizes = {f: (bundle.bundle_dir / f).stat().st_size for f in ("embedder_fp32.tflite", "embedder_fp16.tflite")}
    assert sizes["embedder_fp16.tflite"] < 0.6 * sizes["embedder_fp32.tflite"]


def test_manifest_matches_files_and_model_id(bundle, small_checkpoint: Path) -> None:
    m = verify_bundle(bundle.bundle_dir)
    assert m.embedder is not None and m.embedder.dim == DIM and m.embedder.l2_in_graph
    assert m.source.weights_sha256 == sha256_file(small_checkpoint)
    assert m.source.license == TRUNKS[m.source.name].license  # the trunk registry's licence
    assert m.embedder.model_id == compute_model_id(
        name=m.source.name, weights_sha256=m.source.weights_sha256, preprocessing=m.embedder.preprocessing, dim=DIM
    )
    tfl = m.artifact(ArtifactFormat.TFLITE, Precision.INT8)
    assert tfl.input.shape == [1, SIZE, SIZE, 3] and tfl.input.dtype.value == "uint8"
    emb = tfl.output(OutputRole.EMBEDDING)
    assert emb.shape == [1, DIM] and emb.quantization is not None  # int8 output: dequantise with scale/zero point
    assert tfl.parity is not None and tfl.publishable == tfl.parity.passed
    assert (bundle.bundle_dir / "parity.json").is_file() and (bundle.bundle_dir / "parity.md").is_file()
    assert sorted(f"{a.format.value}/{a.precision.value}" for a in m.artifacts) == ["coreml/int8", "tflite/fp16", "tflite/fp32", "tflite/int8"]
    for prec in (Precision.INT8,):
        ml = m.artifact(ArtifactFormat.COREML, prec)
        assert ml.input.layout.value == "NCHW" and ml.input.shape == [1, 3, SIZE, SIZE]
        if ml.file in bundle.pending:
            assert ml.parity is None and not ml.publishable
        else:
            assert ml.parity is not None and ml.parity.metrics["images"] == 8
            assert ml.parity.metrics["cos_mean"] > 0.995


def test_gate_fails_below_thresholds() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 8))
    noisy = ref + rng.normal(scale=0.8, size=ref.shape)
    labels = np.arange(20) % 5
    r = measure("x.tflite", ref, noisy, labels, ref, labels)
    assert not r.passed and any("cos_mean" in f for f in r.failures)
    assert measure("y.tflite", ref, ref.copy(), labels, ref, labels).passed


def test_cli_exits_nonzero_and_marks_unpublishable_when_gate_fails(small_checkpoint: Path, grocery_dir: Path, tmp_path: Path) -> None:
    from shoplens.cli import app

    out = tmp_path / "b"
    res = CliRunner().invoke(app, [
        "convert", "embedder", "--checkpoint", str(small_checkpoint), "--targets", "tflite", "--precision", "fp32",
        "--out", str(out), "--parity-catalog", str(grocery_dir), "--parity-photos", "8", "--parity-catalog-photos", "8",
        "--min-cos", "1.01",
    ])
    assert res.exit_code == 1, res.output
    m = verify_bundle(out)
    assert [a.publishable for a in m.artifacts] == [False]
    assert m.artifacts[0].parity is not None and not m.artifacts[0].parity.passed


@pytest.mark.parametrize("wrong", [{"mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]}, {"shape": [1, 2 * SIZE, 2 * SIZE, 3]}],
                         ids=["normalisation", "size"])
def test_gate_runs_the_manifest_so_a_wrong_input_spec_fails_it(bundle, small_checkpoint: Path, parity_data: ParityData, tmp_path: Path, wrong: dict) -> None:
    """The gate runs the artifact through the SDK from its manifest entry: the same file under a wrong input spec fails."""
    import shutil

    from shoplens.contract.manifest import InputSpec, load_manifest, save_manifest
    from shoplens.converters.common.result import ConvertResult
    from shoplens.converters.embedder.convert import _Gate, torch_embed
    from shoplens.converters.embedder.evaluate import embed_paths
    from shoplens.converters.embedder.model import load_checkpoint

    data = ParityData(parity_data.queries[:12], parity_data.retrieval_rows[parity_data.retrieval_rows < 12], parity_data.catalog)
    model, _ = load_checkpoint(small_checkpoint)
    ref = torch_embed(model)
    m = load_manifest(bundle.bundle_dir)
    right = m.artifact(ArtifactFormat.TFLITE, Precision.FP32)
    out = tmp_path / "b"
    out.mkdir()
    shutil.copy(bundle.bundle_dir / right.file, out / right.file)
    gate = _Gate(data, embed_paths(ref, data.queries, SIZE), embed_paths(ref, data.catalog, SIZE), None, "test", ConvertResult(m, out))
    for entry, passes in ((right, True), (right.model_copy(update={"input": InputSpec.model_validate({**right.input.model_dump(), **wrong})}), False)):
        m.artifacts = [entry]
        save_manifest(m, out)
        r = gate.run(out, entry, threads=2)
        assert r is not None and r.passed is passes, (r.failures, r.metrics)
