"""Checkpoint -> bundle: TFLite / CoreML artifacts, parity gate, manifest.

One call converts an fp32 embedder checkpoint into every requested target x
precision and writes ``manifest.json`` with the model id (derived from the
checkpoint's sha256, so every artifact of one checkpoint shares it, licensed by
the gate) and each artifact's I/O specs. Each artifact's entry is written before
its gate runs, because the gate (``embedder.parity``) runs the artifact the way a
phone does, from that entry: a wrong input spec fails it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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
from shoplens.contract.errors import ShoplensError
from shoplens.contract.model_id import compute_model_id, sha256_file
from shoplens.converters.common.errors import ConversionError
from shoplens.converters.common.plan import precision_plan
from shoplens.converters.common.result import ConvertResult, tool_versions
from shoplens.converters.embedder import coreml as embedder_coreml
from shoplens.converters.embedder import tflite as embedder_tflite
from shoplens.converters.embedder.data import CatalogDataError, Sample, list_images, load_batch, load_catalog
from shoplens.converters.embedder.evaluate import embed_paths
from shoplens.converters.embedder.model import Embedder, load_checkpoint
from shoplens.converters.embedder.parity import ParityResult, artifact_embedder, embed_photos, load_report, measure, write_report
from shoplens.converters.embedder.trunks import TRUNKS

log = logging.getLogger("shoplens.embedder.convert")
Embed = Callable[[np.ndarray], np.ndarray]
TOOL_PACKAGES = ("shoplens", "torch", "litert-torch", "ai-edge-quantizer", "ai-edge-litert", "coremltools")
OFFERED = {ArtifactFormat.TFLITE: embedder_tflite.TFLITE_PRECISIONS, ArtifactFormat.COREML: embedder_coreml.COREML_PRECISIONS}


@dataclass
class ParityData:
    """Labelled query images and a catalog, both embedded by the reference once per conversion."""

    queries: list[Sample]
    retrieval_rows: np.ndarray  # rows of ``queries`` that are photos (iconic rows only count for cosine)
    catalog: list[Sample]

    @classmethod
    def from_catalog(cls, root: Path, max_photos: int = 300, max_catalog_photos: int | None = None, seed: int = 0) -> "ParityData":
        """Val photos (+ every catalog image) as queries; catalog images + train photos as the catalog.

        ``root``: a Grocery folder or a shop catalog file (``data.load_catalog``); the gate's
        retrieval check needs labelled photos, so a catalog without val photos is refused.
        """
        cat = load_catalog(root)
        if not cat.has_split("val"):
            raise CatalogDataError(f"{root} has no val photos (rows with role val; val.txt in the Grocery layout): the parity gate's retrieval check needs them")
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


def torch_embed(model: Embedder) -> Embed:
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    return run


def _tflite_specs(path: Path, size: int, dim: int) -> tuple[InputSpec, OutputSpec]:
    """The manifest entry's I/O: uint8 NHWC RGB stretched to ``size`` in, the embedding (dequantisation parameters if int8) out."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    oq = None
    if np.issubdtype(o["dtype"], np.integer) and o["quantization"][0]:
        oq = Quantization(scale=float(o["quantization"][0]), zero_point=int(o["quantization"][1]))
    dtypes = {np.uint8: TensorDType.UINT8, np.int8: TensorDType.INT8, np.float32: TensorDType.FLOAT32, np.float16: TensorDType.FLOAT16}
    inp = InputSpec(name=i["name"], shape=[1, size, size, 3], layout=Layout.NHWC, dtype=TensorDType.UINT8, color_order=ColorOrder.RGB, resize=ResizeMode.STRETCH)
    out = OutputSpec(name=o["name"], shape=[1, dim], dtype=dtypes[np.dtype(o["dtype"]).type], role=OutputRole.EMBEDDING, quantization=oq)
    return inp, out


def _coreml_specs(spec: dict[str, Any], precision: Precision, size: int, dim: int) -> tuple[InputSpec, OutputSpec]:
    """An RGB image of 0-255 pixels in (normalisation is inside the program), the embedding out."""
    inp = InputSpec(name=spec["input"], shape=[1, 3, size, size], layout=Layout.NCHW, dtype=TensorDType.UINT8, color_order=ColorOrder.RGB, resize=ResizeMode.STRETCH)
    out = OutputSpec(name=spec["output"], shape=[1, dim], dtype=TensorDType.FLOAT16 if precision is not Precision.FP32 else TensorDType.FLOAT32, role=OutputRole.EMBEDDING)
    return inp, out


def _start_manifest(checkpoint: Path, out_dir: Path, model: Embedder, bundle_name: str | None) -> BundleManifest:
    """Reuse the bundle's manifest when it is for the same model id (converting one more target); else start fresh."""
    cfg = model.config
    weights_sha = sha256_file(checkpoint)
    preprocessing = cfg.preprocessing()
    model_id = compute_model_id(name=cfg.trunk, weights_sha256=weights_sha, preprocessing=preprocessing, dim=cfg.dim)
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
            embedder=EmbedderSpec(dim=cfg.dim, l2_in_graph=True, preprocessing=preprocessing, model_id=model_id),
        )
    manifest.source.license = TRUNKS[cfg.trunk].license if cfg.trunk in TRUNKS else None
    manifest.tools = tool_versions(TOOL_PACKAGES)
    return manifest


@dataclass
class _Gate:
    """The reference's vectors of the parity images, computed once, and the gate each artifact goes through."""

    parity: ParityData
    ref_q: np.ndarray
    ref_c: np.ndarray
    thresholds: dict[str, float] | None
    method: str
    result: ConvertResult

    def run(self, bundle: Path, entry: ArtifactManifest, threads: int, limit: int | None = None) -> ParityResult | None:
        """Gate one artifact as its manifest entry describes it; ``limit``: first N query images (slow evaluator). None: no runtime."""
        t0 = time.time()
        q_lab = np.array([s.product for s in self.parity.queries])
        c_lab = np.array([s.product for s in self.parity.catalog])
        n = len(self.parity.queries) if limit is None else min(limit, len(self.parity.queries))
        try:
            embed = artifact_embedder(bundle, entry, threads)
            if embed is None:
                return None
            art_q = embed_photos(embed, self.parity.queries[:n])
        except (ShoplensError, ValueError) as exc:  # the runtime cannot run the artifact as the manifest describes it
            r = ParityResult(entry.file, {"images": float(n)}, {}, [f"runtime: {exc}"])
        else:
            rows = self.parity.retrieval_rows[self.parity.retrieval_rows < n]
            r = measure(entry.file, self.ref_q[:n], art_q, q_lab[:n], self.ref_c, c_lab, retrieval_rows=rows, thresholds=self.thresholds)
        self.result.seconds[f"parity:{entry.file}"] = time.time() - t0
        log.info("%s: %s", entry.file, {k: round(v, 4) for k, v in r.metrics.items()})
        self.result.results.append(r)
        return r

    def summary(self, r: ParityResult) -> ParitySummary:
        how = self.method if int(r.metrics["images"]) == len(self.parity.queries) else (
            f"first {int(r.metrics['images'])} of the parity images (slow evaluator); " + self.method)
        return ParitySummary(passed=r.passed, metrics=r.metrics, thresholds=r.thresholds, report="parity.md", method=how)


def _record(manifest: BundleManifest, out_dir: Path, file: str, fmt: ArtifactFormat, prec: Precision, inp: InputSpec, out: OutputSpec, notes: str) -> ArtifactManifest:
    """Write the artifact's entry (not publishable until its gate passes) and save the manifest the gate reads."""
    path = out_dir / file
    entry = ArtifactManifest(file=file, format=fmt, precision=prec, sha256=artifact_sha256(path), size_bytes=artifact_size(path),
                             input=inp, outputs=[out], parity=None, publishable=False, notes=notes)
    manifest.upsert_artifact(entry)
    save_manifest(manifest, out_dir)
    return entry


def _gated(manifest: BundleManifest, entry: ArtifactManifest, gate: _Gate, r: ParityResult | None) -> None:
    if r is not None:
        manifest.upsert_artifact(entry.model_copy(update={"parity": gate.summary(r), "publishable": r.passed}))


@dataclass
class EmbedderConvertOptions:
    """Everything ``shoplens convert embedder`` accepts; the same shape as ``DetectorConvertOptions``."""

    checkpoint: Path
    out: Path
    parity: ParityData
    targets: list[str] = field(default_factory=lambda: ["tflite", "coreml"])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8"])
    calib: Path | None = None  # calibration image folder for static int8 (default: catalog images, never the parity queries)
    calib_count: int = 100
    thresholds: dict[str, float] = field(default_factory=dict)  # overrides of the gate's defaults
    name: str | None = None
    threads: int = 2
    coreml_parity_images: int | None = None  # CoreML numeric parity on the first N query images (the evaluator is slow)


def convert_embedder(opts: EmbedderConvertOptions) -> ConvertResult:
    """Convert, gate and write the bundle; never raises for a failed gate (see ``ConvertResult.passed``)."""
    plan, skipped = precision_plan(opts.targets, opts.precisions, OFFERED)
    for why in skipped:
        log.warning("not produced: %s", why)
    torch.set_num_threads(opts.threads)
    checkpoint, out_dir, parity = Path(opts.checkpoint), Path(opts.out), opts.parity
    model, _ = load_checkpoint(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _start_manifest(checkpoint, out_dir, model, opts.name)
    result = ConvertResult(manifest, out_dir, skipped=skipped)
    size = model.config.input_size
    t = time.time()
    ref = torch_embed(model)
    ref_q, ref_c = embed_paths(ref, parity.queries, size), embed_paths(ref, parity.catalog, size)
    result.seconds["reference_embedding"] = time.time() - t
    method = (
        f"{len(parity.queries)} real images ({len(parity.retrieval_rows)} photos + {len(parity.queries) - len(parity.retrieval_rows)} catalog images) "
        f"run by the SDK from the manifest vs PyTorch fp32 from {checkpoint.name}; retrieval against {len(parity.catalog)} catalog images embedded by the reference"
    )
    gate = _Gate(parity, ref_q, ref_c, opts.thresholds, method, result)
    tflite = [p for f, p in plan if f is ArtifactFormat.TFLITE]
    if tflite:
        _convert_tflite(model, out_dir, manifest, tflite, gate, opts.calib, opts.calib_count, opts.threads)
    for p in (p for f, p in plan if f is ArtifactFormat.COREML):
        _convert_coreml(model, out_dir, manifest, p, gate, opts.coreml_parity_images, opts.threads)
    if result.results:
        # rows of artifacts converted earlier from the same checkpoint stay in the report
        current = {r.artifact for r in result.results}
        kept = [r for r in load_report(out_dir) if r.artifact not in current and any(a.file == r.artifact for a in manifest.artifacts)]
        write_report(kept + result.results, out_dir, method)
    save_manifest(manifest, out_dir)
    return result


def _convert_tflite(model: Embedder, out_dir: Path, manifest: BundleManifest, precisions: list[Precision], gate: _Gate,
                    calib: Path | None, calib_count: int, threads: int) -> None:
    """fp32 first (every other TFLite precision is made from it), then one file per precision, each gated."""
    size, dim, seconds = model.config.input_size, model.config.dim, gate.result.seconds
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = out_dir / "embedder_fp32.tflite" if Precision.FP32 in precisions else Path(tmp) / "embedder_fp32.tflite"
        t0 = time.time()
        embedder_tflite.export_fp32(model, fp32)
        seconds["convert:tflite:fp32"] = time.time() - t0
        calib_batches: list[np.ndarray] = []
        if Precision.INT8 in precisions:
            catalog = gate.parity.catalog
            paths = list_images(calib, calib_count) if calib else [s.path for s in catalog[::max(1, len(catalog) // calib_count)]][:calib_count]
            calib_batches = list(load_batch(paths, size))
        for p in precisions:
            file = f"embedder_{p.value}.tflite"
            if p is not Precision.FP32:
                t0 = time.time()
                embedder_tflite.quantize(fp32, p, out_dir / file, calib_batches)
                seconds[f"convert:tflite:{p.value}"] = time.time() - t0
            took = seconds["convert:tflite:fp32"] + seconds.get(f"convert:tflite:{p.value}", 0.0)
            notes = (f"static int8 calibrated on {len(calib_batches)} images; " if p is Precision.INT8 else "") + f"converted in {took:.1f} s"
            inp, out = _tflite_specs(out_dir / file, size, dim)
            entry = _record(manifest, out_dir, file, ArtifactFormat.TFLITE, p, inp, out, notes)
            _gated(manifest, entry, gate, gate.run(out_dir, entry, threads))


def _convert_coreml(model: Embedder, out_dir: Path, manifest: BundleManifest, p: Precision, gate: _Gate, limit: int | None, threads: int) -> None:
    size, dim = model.config.input_size, model.config.dim
    file = f"embedder_{p.value}.mlpackage"
    t0 = time.time()
    embedder_coreml.export(model, p, out_dir / file)
    took = gate.result.seconds[f"convert:coreml:{p.value}"] = time.time() - t0
    spec = embedder_coreml.check_spec(out_dir / file, size, dim)
    if spec["problems"]:
        raise ConversionError(f"{file}: CoreML spec check failed: {spec['problems']}")
    inp, out = _coreml_specs(spec, p, size, dim)
    entry = _record(manifest, out_dir, file, ArtifactFormat.COREML, p, inp, out, f"numeric parity pending: no ML program evaluator available; converted in {took:.1f} s")
    r = gate.run(out_dir, entry, threads, limit)
    if r is None:
        gate.result.pending.append(file)
        return
    notes = f"numeric parity: op-by-op ML program evaluation (mil_eval, fp16 emulated) on {int(r.metrics['images'])} images; converted in {took:.1f} s"
    entry = entry.model_copy(update={"notes": notes})
    _gated(manifest, entry, gate, r)
