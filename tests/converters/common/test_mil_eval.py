"""mil_eval: small ML programs saved as real .mlpackage files, evaluated in numpy, checked against torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402

from shoplens.converters.common.mil_eval import MILEvaluator, UnsupportedOp, load_mlpackage  # noqa: E402

RNG = np.random.default_rng(42)
W1 = RNG.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.3
B1 = RNG.normal(size=(8,)).astype(np.float32)
WG = RNG.normal(size=(8, 2, 3, 3)).astype(np.float32) * 0.3  # groups=4
W_LIN = RNG.normal(size=(5, 8)).astype(np.float32)


def _save(prog, path: Path, fp16: bool) -> Path:
    model = ct.convert(
        prog,
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS16,
        skip_model_load=True,
    )
    model.save(str(path))
    return path


def _program():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 17, 15))], opset_version=ct.target.iOS16)
    def prog(x):
        y = mb.conv(x=x, weight=W1, bias=B1, strides=[2, 1], pad_type="custom", pad=[1, 1, 0, 2], dilations=[1, 1])
        y = mb.silu(x=y)
        g = mb.conv(x=y, weight=WG, groups=4, pad_type="same", dilations=[2, 2])
        a, b = mb.split(x=g, split_sizes=[3, 5], axis=1)
        y = mb.concat(values=[b, mb.sigmoid(x=a)], axis=1)
        y = mb.max_pool(x=y, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1])
        y = mb.upsample_nearest_neighbor(x=y, scale_factor_height=2.0, scale_factor_width=2.0)
        y = mb.avg_pool(x=y, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid")
        s = mb.softmax(x=y, axis=1)
        m = mb.reduce_mean(x=s, axes=[2, 3], keep_dims=False)  # (1, 8)
        lin = mb.linear(x=m, weight=W_LIN)
        t = mb.transpose(x=mb.reshape(x=y, shape=[1, 8, -1]), perm=[0, 2, 1])
        sl = mb.slice_by_index(x=t, begin=[0, 1, 0], end=[1, 4, 8], end_mask=[False, False, True], squeeze_mask=[True, False, False])
        return lin, mb.mul(x=mb.add(x=sl, y=1.0), y=0.5)

    return prog


def _torch_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = torch.from_numpy(x)
    y = F.conv2d(F.pad(t, (0, 2, 1, 1)), torch.from_numpy(W1), torch.from_numpy(B1), stride=(2, 1))
    y = F.silu(y)
    g = F.conv2d(y, torch.from_numpy(WG), groups=4, padding=2, dilation=2)
    a, b = g[:, :3], g[:, 3:]
    y = torch.cat([b, torch.sigmoid(a)], 1)
    y = F.max_pool2d(y, 3, 2, padding=1)
    y = F.interpolate(y, scale_factor=2, mode="nearest")
    y = F.avg_pool2d(y, 2, 2)
    s = torch.softmax(y, 1)
    lin = s.mean((2, 3)) @ torch.from_numpy(W_LIN).T
    t2 = y.reshape(1, 8, -1).permute(0, 2, 1)[0, 1:4, :]
    return lin.numpy(), ((t2 + 1) * 0.5).numpy()


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mil")
    return {"fp32": _save(_program(), d / "fp32.mlpackage", fp16=False), "fp16": _save(_program(), d / "fp16.mlpackage", fp16=True)}


def test_fp32_program_matches_torch(packages: dict[str, Path]) -> None:
    ev = MILEvaluator.from_mlpackage(packages["fp32"])
    x = RNG.normal(size=(1, 3, 17, 15)).astype(np.float32)
    outs = list(ev.run({ev.input_names[0]: x}).values())
    ref = _torch_reference(x)
    for got, want in zip(outs, ref):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fp16_program_rounds_like_fp16(packages: dict[str, Path]) -> None:
    ev = MILEvaluator.from_mlpackage(packages["fp16"])
    assert "cast" in ev.op_types
    x = RNG.normal(size=(1, 3, 17, 15)).astype(np.float32)
    emulated = list(ev.run({ev.input_names[0]: x}).values())
    exact = list(MILEvaluator.from_mlpackage(packages["fp16"], emulate_fp16=False).run({ev.input_names[0]: x}).values())
    ref = _torch_reference(x)
    for em, ex, want in zip(emulated, exact, ref):
        np.testing.assert_allclose(ex, want, rtol=1e-3, atol=1e-3)  # fp16 weights only
        np.testing.assert_allclose(em, want, rtol=2e-2, atol=2e-2)  # plus fp16 activations
        assert not np.array_equal(em, ex)  # the rounding really happens


def test_palettized_weights_are_materialised(tmp_path: Path) -> None:
    """A LUT-compressed conv decompresses to exactly its (few) original values."""
    import coremltools.optimize.coreml as cto

    levels = np.linspace(-1, 1, 16).astype(np.float32)
    w = levels[RNG.integers(0, 16, size=(32, 16, 3, 3))]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 16, 8, 8))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.conv(x=x, weight=w, pad_type="valid")

    model = ct.convert(prog, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32, minimum_deployment_target=ct.target.iOS16, skip_model_load=True)
    cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="unique", weight_threshold=16))
    model = cto.palettize_weights(model, config=cfg)
    path = tmp_path / "pal.mlpackage"
    model.save(str(path))
    ev = MILEvaluator.from_mlpackage(path)
    assert any(t.startswith("constexpr_") for t in ev.op_types)
    x = RNG.normal(size=(1, 16, 8, 8)).astype(np.float32)
    got = next(iter(ev.run({ev.input_names[0]: x}).values()))
    np.testing.assert_allclose(got, F.conv2d(torch.from_numpy(x), torch.from_numpy(w)).numpy(), rtol=1e-4, atol=1e-4)


def test_unknown_ops_and_bad_inputs_are_refused(tmp_path: Path, packages: dict[str, Path]) -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.erf(x=x)

    path = _save(prog, tmp_path / "erf.mlpackage", fp16=False)
    with pytest.raises(UnsupportedOp, match="erf"):
        MILEvaluator.from_mlpackage(path)
    ev = MILEvaluator(load_mlpackage(packages["fp32"]))
    with pytest.raises(ValueError, match="shape"):
        ev.run({ev.input_names[0]: np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(KeyError, match="missing input"):
        ev.run({})


def test_embedder_style_ops_match_numpy(tmp_path: Path) -> None:
    """Ops an embedder head uses (batch_norm, pad, matmul, l2_norm, reductions, clip, squeeze)."""
    mean, var = RNG.normal(size=4).astype(np.float32), RNG.random(4).astype(np.float32) + 0.5
    gamma, beta = RNG.normal(size=4).astype(np.float32), RNG.normal(size=4).astype(np.float32)
    w = RNG.normal(size=(4, 6)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 5, 5))], opset_version=ct.target.iOS16)
    def prog(x):
        y = mb.batch_norm(x=x, mean=mean, variance=var, gamma=gamma, beta=beta, epsilon=1e-3)
        y = mb.relu(x=mb.pad(x=y, pad=[1, 0, 0, 2], mode="constant", constant_val=0.5))
        n = mb.l2_norm(x=y, epsilon=1e-6)
        s = mb.reduce_sum(x=n, axes=[2, 3], keep_dims=True)
        v = mb.squeeze(x=s, axes=[2, 3])  # (1, 4)
        m = mb.matmul(x=v, y=w)
        return mb.clip(x=mb.real_div(x=m, y=2.0), alpha=-0.5, beta=0.5)

    ev = MILEvaluator.from_mlpackage(_save(prog, tmp_path / "emb.mlpackage", fp16=False))
    x = RNG.normal(size=(1, 4, 5, 5)).astype(np.float32)
    got = next(iter(ev.run({ev.input_names[0]: x}).values()))
    sh = (1, -1, 1, 1)
    y = (x - mean.reshape(sh)) / np.sqrt(var.reshape(sh) + 1e-3) * gamma.reshape(sh) + beta.reshape(sh)
    y = np.maximum(np.pad(y, [(0, 0), (0, 0), (1, 0), (0, 2)], constant_values=0.5), 0)
    n = y / np.sqrt((y * y).sum() + 1e-6)
    want = np.clip((n.sum(axis=(2, 3)) @ w) / 2.0, -0.5, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
