"""The embedder parity gate: does a converted artifact put images where the PyTorch fp32 model does?

Two artifacts may only share a model id (and so one catalog collection) if
their vectors are interchangeable. Measured per artifact on real images:
- cosine to the fp32 reference vector of the same image (mean, p1, min);
- retrieval agreement against a catalog embedded by the reference: the
  overlap of the top-10 neighbours, and recall@1/@5 of the artifact's query
  vectors next to the reference's own recall (what a phone would really see).
The gate fails below the thresholds (defaults: mean cos >= 0.99, top-10 overlap
>= 0.95); a failed artifact is written with ``publishable: false`` and the CLI
exits non-zero.

The artifact side runs as a phone runs it: a TFLite artifact in the SDK's
``Embedder`` configured by its manifest entry, a CoreML one on the tensor the
SDK's encoder makes from the entry's input spec. So the gate checks the
manifest with the model: a wrong size, normalisation or layout fails it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from shoplens.contract.manifest import ArtifactFormat, ArtifactManifest
from shoplens.converters.embedder.data import Sample
from shoplens.converters.embedder.evaluate import recall_at, topk_overlap
from shoplens.sdk.images import load_rgb
from shoplens.sdk.tensors import prepare_input

EmbedPhoto = Callable[[np.ndarray], np.ndarray]

DEFAULT_THRESHOLDS = {"cos_mean": 0.99, "top10_overlap": 0.95}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class ParityResult:
    artifact: str
    metrics: dict[str, float]
    thresholds: dict[str, float]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def artifact_embedder(bundle: Path, entry: ArtifactManifest, threads: int = 2) -> EmbedPhoto | None:
    """``photo -> vector`` for one artifact, run from its manifest entry; None where nothing can run it.

    TFLite runs in ``shoplens.sdk.runtime.Embedder``. CoreML has no runtime off
    macOS: the ML program is evaluated op by op (``common.mil_eval``) on the input
    the SDK's encoder prepares from the entry's spec.
    """
    if entry.format is ArtifactFormat.TFLITE:
        from shoplens.sdk.runtime import Embedder

        return Embedder(bundle, entry.precision, num_threads=threads).embed
    from shoplens.converters.embedder.coreml import numeric_runner

    run = numeric_runner(bundle / entry.file)
    if run is None:
        return None
    program = run

    def embed(rgb: np.ndarray) -> np.ndarray:
        x, _ = prepare_input(rgb, entry.input)
        return program(x)

    return embed


def embed_photos(embed: EmbedPhoto, samples: Sequence[Sample]) -> np.ndarray:
    """Vectors of ``samples``, each decoded like a phone decodes a photo (EXIF-upright RGB, full size)."""
    return np.stack([embed(load_rgb(s.path)) for s in samples]) if samples else np.zeros((0, 0), np.float32)


def measure(
    artifact: str,
    ref_queries: np.ndarray,
    art_queries: np.ndarray,
    query_labels: np.ndarray,
    ref_catalog: np.ndarray,
    catalog_labels: np.ndarray,
    *,
    retrieval_rows: np.ndarray | None = None,
    thresholds: dict[str, float] | None = None,
) -> ParityResult:
    """Parity of ``art_queries`` vs ``ref_queries`` (same images, same order).

    ``retrieval_rows`` selects the query rows used for retrieval (e.g. photos
    only, not the catalog's own images); cosine uses every row.
    """
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    ref, art = _unit(ref_queries), _unit(art_queries)
    cos = np.sum(ref * art, axis=1)
    rows = np.arange(len(ref)) if retrieval_rows is None else retrieval_rows
    cat = _unit(ref_catalog)
    m: dict[str, float] = {
        "images": float(len(ref)),
        "cos_mean": float(cos.mean()),
        "cos_p1": float(np.percentile(cos, 1)),
        "cos_min": float(cos.min()),
        "top10_overlap": topk_overlap(art[rows], ref[rows], cat, 10),
        "retrieval_queries": float(len(rows)),
        "catalog_size": float(len(cat)),
    }
    for k, v in recall_at(art[rows], query_labels[rows], cat, catalog_labels).items():
        m[f"recall{k[1:]}"] = v
    for k, v in recall_at(ref[rows], query_labels[rows], cat, catalog_labels).items():
        m[f"ref_recall{k[1:]}"] = v
    failures = [f"{key} {m[key]:.4f} < {limit}" for key, limit in th.items() if key in m and m[key] < limit]
    return ParityResult(artifact, m, th, failures)


def load_report(out_dir: str | os.PathLike[str], stem: str = "parity") -> list[ParityResult]:
    """The rows of an existing ``parity.json`` (so converting one more target keeps the others' rows)."""
    path = Path(out_dir) / f"{stem}.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return [ParityResult(name, row["metrics"], row["thresholds"], row["failures"]) for name, row in data.get("artifacts", {}).items()]


def write_report(results: list[ParityResult], out_dir: str | os.PathLike[str], method: str, stem: str = "parity") -> tuple[Path, Path]:
    """``parity.json`` + ``parity.md`` in the bundle (one row per artifact)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "method": method,
        "artifacts": {r.artifact: {"passed": r.passed, "metrics": r.metrics, "thresholds": r.thresholds, "failures": r.failures} for r in results},
    }
    jpath = out / f"{stem}.json"
    jpath.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    lines = [
        "# Embedder parity report",
        "",
        method,
        "",
        "| artifact | passed | images | cos mean | cos p1 | cos min | top-10 overlap | R@1 | R@5 | ref R@1 | ref R@5 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r.metrics
        cells = [f"{m[k]:.4f}" if k in m else "-" for k in ("cos_mean", "cos_p1", "cos_min")]
        cells += [f"{m[k]:.3f}" if k in m else "-" for k in ("top10_overlap", "recall@1", "recall@5", "ref_recall@1", "ref_recall@5")]
        lines.append(f"| {r.artifact} | {'yes' if r.passed else 'NO: ' + '; '.join(r.failures)} | {int(m.get('images', 0))} | " + " | ".join(cells) + " |")
    mpath = out / f"{stem}.md"
    mpath.write_text("\n".join(lines) + "\n")
    return jpath, mpath
