"""Checkpoint -> bundle: TFLite / CoreML artifacts, parity gate, manifest.

One call converts an fp32 embedder checkpoint into every requested target x
precision, measures each artifact against the PyTorch model on real labelled
images (``embedder_parity``), and writes ``manifest.json`` with the model id
(derived from the checkpoint's sha256, so every artifact of one checkpoint
shares it, licensed by the gate), the I/O specs and the parity summaries.
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from shoplens.contract.manifest import (
    ArtifactFormat,
    ArtifactManifest,
    BundleManifest,
    ColorOrder,
    EmbedderSpec,
    InputSpec,
    Layout,
    OutputRole,
    OutputSpec,
    ParitySummary,
    Precision,
    Quantization,
    ResizeMode,
    SourceSpec,
    Task,
    TensorDType,
    artifact_sha256,
    artifact_size,
    load_manifest,
    save_manifest,
)
from shoplens.contract.model_id import compute_model_id, sha256_file
from shoplens.converters import embedder_coreml, embedder_tflite
from shoplens.converters.embedder_data import Sample, list_images, load_batch, load_catalog
from shoplens.converters.embedder_eval import embed_paths
from shoplens.converters.embedder_model import Embedder, load_checkpoint
from shoplens.converters.embedder_parity import ParityResult, load_report, measure, write_report

log = logging.getLogger("shoplens.embedder.convert")
Embed = Callable[[np.ndarray], np.ndarray]


@dataclass
class ParityData:
    """Labelled query images and a catalog, both embedded by the reference once per conversion."""

    queries: list[Sample]
    retrieval_rows: np.ndarray  # rows of ``queries`` that are photos (iconic rows only count for cosine)
    catalog: list[Sample]

    @classmethod
    def from_catalog(cls, root: Path, max_photos: int = 300, max_catalog_photos: int | None = None, seed: int = 0) -> "ParityData":
        """Val photos (+ every iconic image) as queries; iconic + train photos as the catalog."""
        cat = load_catalog(root)
        val = cat.split("val")
        if len(val) > max_photos:
            idx = np.random.default_rng(seed).choice(len(val), max_photos, replace=False)
            val = [val[i] for i in sorted(idx)]
        train = cat.split("train")
        if max_catalog_photos is not None and len(train) > max_catalog_photos:
            idx = np.random.default_rng(seed).choice(len(train), max_catalog_photos, replace=False)
            train = [train[i] for i in sorted(idx)]
        iconic = cat.iconic_samples()
        return cls(val + iconic, np.arange(len(val)), iconic + train)


@dataclass
class ConvertResult:
    bundle: Path
    manifest: BundleManifest
    parity: list[ParityResult] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # artifacts without numeric parity
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.parity)


def torch_embed(model: Embedder) -> Embed:
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    return run


def _tools() -> dict[str, str]:
    out = {}
    for pkg in ("shoplens", "torch", "litert-torch", "ai-edge-quantizer", "ai-edge-litert", "coremltools"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _tflite_specs(path: Path, size: int, dim: int) -> tuple[InputSpec, OutputSpec]:
    runner = embedder_tflite.TFLiteEmbedder(path, threads=1)
    i, o = runner.input, runner.output
    oq = None
    if np.issubdtype(o["dtype"], np.integer) and o["quantization"][0]:
        oq = Quantization(scale=float(o["quantization"][0]), zero_point=int(o["quantization"][1]))
    dtypes = {np.uint8: TensorDType.UINT8, np.int8: TensorDType.INT8, np.float32: TensorDType.FLOAT32, np.float16: TensorDType.FLOAT16}
    inp = InputSpec(name=i["name"], shape=[1, size, size, 3], layout=Layout.NHWC, dtype=TensorDType.UINT8, color_order=ColorOrder.RGB, resize=ResizeMode.STRETCH)
    out = OutputSpec(name=o["name"], shape=[1, dim], dtype=dtypes[np.dtype(o["dtype"]).type], role=OutputRole.EMBEDDING, quantization=oq)
    return inp, out


def convert(
    checkpoint: Path,
    out_dir: Path,
    *,
    targets: list[str],
    precisions: list[str],
    parity: ParityData,
    calib: Path | None = None,
    calib_count: int = 100,
    thresholds: dict[str, float] | None = None,
    bundle_name: str | None = None,
    threads: int = 2,
    coreml_parity_images: int | None = None,
) -> ConvertResult:
    torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    cfg = model.config
    size, dim = cfg.input_size, cfg.dim
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_sha = sha256_file(checkpoint)
    preprocessing = cfg.preprocessing()
    model_id = compute_model_id(name=cfg.trunk, weights_sha256=weights_sha, preprocessing=preprocessing, dim=dim)
    manifest: BundleManifest | None = None
    if (out_dir / "manifest.json").is_file():
        old = load_manifest(out_dir)
        if old.embedder is not None and old.embedder.model_id == model_id:
            manifest = old
    if manifest is None:
        manifest = BundleManifest(
            name=bundle_name or out_dir.name,
            task=Task.EMBEDDER,
            source=SourceSpec(name=cfg.trunk, weights=f"{checkpoint.name} (trunk weights: {cfg.weights})", weights_sha256=weights_sha),
            embedder=EmbedderSpec(dim=dim, l2_in_graph=True, preprocessing=preprocessing, model_id=model_id),
        )
    manifest.tools = _tools()
    result = ConvertResult(out_dir, manifest)

    t = time.time()
    ref = torch_embed(model)
    ref_q = embed_paths(ref, parity.queries, size)
    ref_c = embed_paths(ref, parity.catalog, size)
    q_lab = np.array([s.product for s in parity.queries])
    c_lab = np.array([s.product for s in parity.catalog])
    result.seconds["reference_embedding"] = time.time() - t
    method = (
        f"{len(parity.queries)} real images ({len(parity.retrieval_rows)} photos + {len(parity.queries) - len(parity.retrieval_rows)} catalog images) "
        f"vs PyTorch fp32 from {checkpoint.name}; retrieval against {len(parity.catalog)} catalog images embedded by the reference"
    )
    results: list[ParityResult] = []

    def gate(file: str, run: Embed, limit: int | None = None) -> ParityResult:
        """``limit``: first N query images only (the numpy ML-program evaluator is slow)."""
        t0 = time.time()
        n = len(parity.queries) if limit is None else min(limit, len(parity.queries))
        art_q = embed_paths(run, parity.queries[:n], size)
        rows = parity.retrieval_rows[parity.retrieval_rows < n]
        r = measure(file, ref_q[:n], art_q, q_lab[:n], ref_c, c_lab, retrieval_rows=rows, thresholds=thresholds)
        result.seconds[f"parity:{file}"] = time.time() - t0
        log.info("%s: %s", file, {k: round(v, 4) for k, v in r.metrics.items()})
        results.append(r)
        return r

    def record(file: str, fmt: ArtifactFormat, prec: Precision, inp: InputSpec, out: OutputSpec, r: ParityResult | None, notes: str = "") -> None:
        summary = None
        if r is not None:
            how = method if int(r.metrics["images"]) == len(parity.queries) else (
                f"first {int(r.metrics['images'])} of the parity images (slow evaluator); " + method)
            summary = ParitySummary(passed=r.passed, metrics=r.metrics, thresholds=r.thresholds, report="parity.md", method=how)
        path = out_dir / file
        manifest.upsert_artifact(
            ArtifactManifest(file=file, format=fmt, precision=prec, sha256=artifact_sha256(path), size_bytes=artifact_size(path),
                             input=inp, outputs=[out], parity=summary, publishable=bool(r is not None and r.passed), notes=notes)
        )

    def for_target(target: str) -> list[str]:
        """``int8`` applies to every target, ``coreml:int8`` only to CoreML."""
        out = []
        for p in precisions:
            t, _, prec = p.rpartition(":")
            if not t or t == target:
                out.append(prec)
        return out

    if "tflite" in targets:
        tfl_all = for_target("tflite")
        tfl_precisions = [p for p in tfl_all if p in embedder_tflite.TFLITE_PRECISIONS]
        for p in tfl_all:
            if p not in embedder_tflite.TFLITE_PRECISIONS:
                log.warning("TFLite: precision %s not produced (TFLite precisions: %s)", p, ", ".join(embedder_tflite.TFLITE_PRECISIONS))
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = out_dir / "embedder_fp32.tflite" if "fp32" in tfl_precisions else Path(tmp) / "embedder_fp32.tflite"
            t0 = time.time()
            embedder_tflite.export_fp32(model, fp32)
            result.seconds["convert:tflite:fp32"] = time.time() - t0
            calib_batches: list[np.ndarray] = []
            if "int8" in tfl_precisions:
                paths = list_images(calib, calib_count) if calib else [s.path for s in parity.catalog[::max(1, len(parity.catalog) // calib_count)]][:calib_count]
                calib_batches = list(load_batch(paths, size))
            for p in tfl_precisions:
                file = f"embedder_{p}.tflite"
                if p != "fp32":
                    t0 = time.time()
                    embedder_tflite.quantize(fp32, p, out_dir / file, calib_batches)
                    result.seconds[f"convert:tflite:{p}"] = time.time() - t0
                r = gate(file, embedder_tflite.TFLiteEmbedder(out_dir / file, threads=threads))
                inp, out = _tflite_specs(out_dir / file, size, dim)
                took = result.seconds["convert:tflite:fp32"] + result.seconds.get(f"convert:tflite:{p}", 0.0)
                notes = (f"static int8 calibrated on {len(calib_batches)} images; " if p == "int8" else "") + f"converted in {took:.1f} s"
                record(file, ArtifactFormat.TFLITE, Precision(p), inp, out, r, notes)

    if "coreml" in targets:
        for p in for_target("coreml"):
            if p not in embedder_coreml.COREML_PRECISIONS:
                log.warning("CoreML: precision %s not produced (CoreML precisions: %s)", p, ", ".join(embedder_coreml.COREML_PRECISIONS))
                continue
            file = f"embedder_{p}.mlpackage"
            t0 = time.time()
            embedder_coreml.export(model, p, out_dir / file)
            result.seconds[f"convert:coreml:{p}"] = time.time() - t0
            spec = embedder_coreml.check_spec(out_dir / file, size, dim)
            if spec["problems"]:
                raise RuntimeError(f"{file}: CoreML spec check failed: {spec['problems']}")
            runner = embedder_coreml.numeric_runner(out_dir / file)
            r = gate(file, runner, coreml_parity_images) if runner is not None else None
            if r is None:
                result.pending.append(file)
            inp = InputSpec(name=spec["input"], shape=[1, 3, size, size], layout=Layout.NCHW, dtype=TensorDType.UINT8, color_order=ColorOrder.RGB, resize=ResizeMode.STRETCH)
            out = OutputSpec(name=spec["output"], shape=[1, dim], dtype=TensorDType.FLOAT16 if p != "fp32" else TensorDType.FLOAT32, role=OutputRole.EMBEDDING)
            notes = f"numeric parity: op-by-op ML program evaluation (mil_eval, fp16 emulated) on {int(r.metrics['images'])} images" if r is not None else "numeric parity pending: no ML program evaluator available"
            notes += f"; converted in {result.seconds[f'convert:coreml:{p}']:.1f} s"
            record(file, ArtifactFormat.COREML, Precision(p), inp, out, r, notes)

    result.parity = results
    if results:
        # rows of artifacts converted earlier from the same checkpoint stay in the report
        current = {r.artifact for r in results}
        kept = [r for r in load_report(out_dir) if r.artifact not in current and any(a.file == r.artifact for a in manifest.artifacts)]
        write_report(kept + results, out_dir, method)
    save_manifest(manifest, out_dir)
    return result
