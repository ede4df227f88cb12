"""Embedder benchmark: size, TFLite latency, parity and retrieval quality on the Grocery Store data.

Rows: PCA head (closed form, no labels), fine-tuned fp32 (PyTorch), every
artifact of the shipped bundle (TFLite; CoreML rows report size and parity
only: no CoreML runtime on Linux), and the off-the-shelf ImageNet MobileNetV1
TFLite embedder as the reference. Seen products: all val photos; unseen: the
products held out by the ``--holdout-checkpoint`` run, queried against their
iconic images (all 81 iconic images and the held-out ones only).

    .venv/bin/python benchmarks/embedder.py [--bundle mobile_assets/resnet50v2-s3-256]

Prints a table and writes ``benchmarks/results/embedder.json``.

Trunks side by side (size and per-crop TFLite latency of every artifact of each bundle, no
retrieval and no checkpoint needed; the bundles' timings are interleaved round by round, so a
shared machine's load falls on all of them alike):

    .venv/bin/python benchmarks/embedder.py --latency-only --compare-bundle /tmp/lite0-bundle [--latency-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from shoplens.contract.manifest import ArtifactFormat, verify_bundle
from shoplens.converters.embedder.convert import torch_embed
from shoplens.converters.embedder.data import load_catalog
from shoplens.converters.embedder.evaluate import RetrievalSets, embed_paths, evaluate_vectors
from shoplens.converters.embedder.head import fit_head
from shoplens.converters.embedder.model import EmbedderConfig, build_embedder, load_checkpoint
from shoplens.converters.embedder.parity import embed_photos
from shoplens.sdk.runtime import Embedder as SDKEmbedder
from shoplens.sdk.wrap import wrap_tflite_embedder
from shoplens.resources import find_weights, grocery_store
from shoplens.settings import get_settings

REPO = Path(__file__).resolve().parents[1]
Embed = Callable[[np.ndarray], np.ndarray]


class MobileNetV1Reference:
    """The Coral MobileNetV1 embedding extractor (uint8 224 in, 1024-d uint8 out), wrapped in a bundle and run by the SDK."""

    size = 224

    def __init__(self, threads: int = 2) -> None:
        self.path = find_weights("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite").require()
        self.bundle = get_settings().cache_dir / "benchmarks" / "mobilenet_v1_bundle"
        wrap_tflite_embedder(self.path, self.bundle, link=True)
        self.embedder = SDKEmbedder(self.bundle, num_threads=threads)


def latency_ms(bundle: Path, precision: str | None, threads: int, runs: int = 30) -> float:
    """Mean SDK ``embed`` time of one already-sized random image (preprocessing is then a no-op)."""
    e = SDKEmbedder(bundle, precision, num_threads=threads)
    x = np.random.default_rng(0).integers(0, 255, size=(e.artifact.input.height, e.artifact.input.width, 3), dtype=np.uint8)
    for _ in range(3):
        e.embed(x)
    t = time.perf_counter()
    for _ in range(runs):
        e.embed(x)
    return (time.perf_counter() - t) / runs * 1000


def compare_latency(bundles: list[Path], threads: tuple[int, ...] = (1, 2), rounds: int = 7, runs: int = 20) -> list[dict]:
    """Size and SDK ``embed`` latency (ms per 224 px crop, median of ``rounds`` means of ``runs`` calls) of every TFLite
    artifact of each bundle; one round times every (artifact, threads) in turn, so load changes hit all rows alike."""
    rows: list[dict] = []
    embedders: list[tuple[dict, SDKEmbedder, np.ndarray]] = []
    for bundle in bundles:
        manifest = verify_bundle(bundle)
        for a in manifest.artifacts:
            row = {"bundle": bundle.name, "trunk": manifest.source.name, "artifact": a.file, "precision": a.precision.value, "runtime": a.format.value,
                   "size_mb": a.size_bytes / 1e6, "publishable": a.publishable}
            if a.parity:
                row["parity_cos_mean"] = a.parity.metrics.get("cos_mean")
            rows.append(row)
            if a.format is not ArtifactFormat.TFLITE:
                continue
            for t in threads:
                e = SDKEmbedder(bundle, a.precision, num_threads=t)
                x = np.random.default_rng(0).integers(0, 255, size=(e.artifact.input.height, e.artifact.input.width, 3), dtype=np.uint8)
                for _ in range(3):
                    e.embed(x)
                embedders.append((row | {"threads": t}, e, x))
    samples: dict[int, list[float]] = {i: [] for i in range(len(embedders))}
    for _ in range(rounds):
        for i, (_, e, x) in enumerate(embedders):
            t0 = time.perf_counter()
            for _ in range(runs):
                e.embed(x)
            samples[i].append((time.perf_counter() - t0) / runs * 1000)
    for i, (key, _, _) in enumerate(embedders):
        row = next(r for r in rows if r["bundle"] == key["bundle"] and r["artifact"] == key["artifact"])
        row[f"latency_ms_{key['threads']}t"] = float(np.median(samples[i]))
    return rows


def sdk_vectors(sets: RetrievalSets, embedder: SDKEmbedder, with_train: bool) -> dict[str, np.ndarray]:
    keys = ("val", "iconic", "train") if with_train else ("val", "iconic")
    return {k: embed_photos(embedder.embed, getattr(sets, k)) for k in keys}


def vectors(sets: RetrievalSets, run: Embed, size: int, with_train: bool) -> dict[str, np.ndarray]:
    keys = ("val", "iconic", "train") if with_train else ("val", "iconic")
    return {k: embed_paths(run, getattr(sets, k), size) for k in keys}


def wait_for(path: Path, minutes: float) -> bool:
    """The held-out run may still be training when the benchmark starts; its rows come last."""
    deadline = time.time() + minutes * 60
    while not path.is_file() and time.time() < deadline:
        time.sleep(10)
    return path.is_file()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cache = get_settings().cache_dir / "embedder"
    ap.add_argument("--bundle", type=Path, default=REPO / "mobile_assets" / "resnet50v2-s3-256")
    ap.add_argument("--checkpoint", type=Path, default=cache / "resnet50v2-s3-256.pt")
    ap.add_argument("--holdout-checkpoint", type=Path, default=cache / "resnet50v2-s3-256-holdout27.pt")
    ap.add_argument("--wait-holdout", type=float, default=0.0, help="minutes to wait for the held-out checkpoint")
    ap.add_argument("--catalog", type=Path, default=None)
    ap.add_argument("--no-train-catalog", action="store_true", help="skip the iconic + train catalog (faster)")
    ap.add_argument("--keep-pca", action="store_true", help="keep the PCA-head row of the existing result file instead of refitting (minutes)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "embedder.json")
    ap.add_argument("--compare-bundle", type=Path, action="append", default=[],
                    help="another embedder bundle (e.g. of another trunk) whose artifacts' size and latency are measured beside --bundle's (repeatable)")
    ap.add_argument("--latency-only", action="store_true",
                    help="only size and TFLite latency of --bundle and every --compare-bundle, interleaved (no checkpoint, no retrieval); prints a table")
    ap.add_argument("--latency-out", type=Path, default=None, help="with --latency-only: also write the rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.latency_only:
        latency_report([args.bundle, *args.compare_bundle], args.latency_out)
        return
    root = args.catalog or grocery_store().require() / "dataset"
    cat = load_catalog(root)
    sets = RetrievalSets.from_catalog(cat)
    with_train = not args.no_train_catalog
    rows: list[tuple[dict, dict[str, np.ndarray] | None, str]] = []  # (row, vectors, which unseen set applies)

    model, _ = load_checkpoint(args.checkpoint)
    size = model.config.input_size
    earlier = {r["model"]: r for r in json.loads(args.out.read_text()).get("rows", [])} if args.out.is_file() else {}
    pca_name = "PCA head (ImageNet trunk, no fine-tuning)"
    if args.keep_pca and pca_name in earlier:  # the baseline does not change with training: keep its measured row
        rows.append(({**earlier[pca_name], "kept_from": "an earlier run of this script (--keep-pca)"}, None, "kept"))
    else:
        t = time.time()
        pca = build_embedder(EmbedderConfig(input_size=size, dim=model.config.dim))
        fit_head(pca, [s.path for s in sets.train] + [s.path for s in sets.iconic])
        rows.append(({"model": pca_name, "precision": "fp32", "runtime": "pytorch", "input_size": size, "fit_seconds": time.time() - t},
                     vectors(sets, torch_embed(pca), size, with_train), "report"))
    rows.append(({"model": "fine-tuned on all products", "precision": "fp32", "runtime": "pytorch"}, vectors(sets, torch_embed(model), size, with_train), "none"))
    manifest = verify_bundle(args.bundle)
    for a in manifest.artifacts:
        row = {"model": f"bundle {a.file}", "precision": a.precision.value, "runtime": a.format.value, "size_mb": a.size_bytes / 1e6, "publishable": a.publishable}
        took = re.search(r"converted in ([0-9.]+) s", a.notes or "")
        if took:  # written by `shoplens convert embedder` (TFLite: fp32 export + quantisation)
            row["convert_s"] = float(took.group(1))
        if a.parity:
            row.update({f"parity_{k}": v for k, v in a.parity.metrics.items() if k.startswith(("cos", "top10", "images"))})
        vec = None
        if a.format is ArtifactFormat.TFLITE:
            row["latency_ms_1t"] = latency_ms(args.bundle, a.precision.value, 1)
            row["latency_ms_2t"] = latency_ms(args.bundle, a.precision.value, 2)
            vec = sdk_vectors(sets, SDKEmbedder(args.bundle, a.precision, num_threads=2), with_train)
        rows.append((row, vec, "none"))
    for extra in args.compare_bundle:  # other trunks: size and latency beside the shipped bundle (retrieval: benchmarks/embedder_holdout.py)
        for r in compare_latency([extra]):
            rows.append(({"model": f"bundle {extra.name}/{r['artifact']}", **{k: v for k, v in r.items() if k not in ("bundle", "artifact")}}, None, "none"))
    mnet = MobileNetV1Reference()
    rows.append(({"model": "MobileNetV1 ImageNet embedder (reference)", "precision": "uint8", "runtime": "tflite", "size_mb": mnet.path.stat().st_size / 1e6,
                  "latency_ms_1t": latency_ms(mnet.bundle, None, 1), "latency_ms_2t": latency_ms(mnet.bundle, None, 2)}, sdk_vectors(sets, mnet.embedder, with_train), "report"))
    held: set[int] = set()
    if wait_for(args.holdout_checkpoint, args.wait_holdout):
        hmodel, _ = load_checkpoint(args.holdout_checkpoint)
        held = set(hmodel.config.meta.get("held_out_products", []))
        rows.append(({"model": f"fine-tuned without {len(held)} held-out products", "precision": "fp32", "runtime": "pytorch"},
                     vectors(sets, torch_embed(hmodel), size, with_train), "heldout_run"))

    results = []
    for row, vec, unseen in rows:
        if vec is not None:
            if unseen == "heldout_run":  # seen rows: only the products this model trained on
                row.update(evaluate_vectors(sets, vec, unseen=held))
            else:  # all products, plus the held-out products' rows where they apply
                row.update(evaluate_vectors(sets, vec))
                if unseen == "report" and held:
                    row.update({k: v for k, v in evaluate_vectors(sets, vec, unseen=held).items() if k.startswith("unseen")})
        results.append(row)
    cols = ["photo_iconic_r@1", "photo_iconic_r@5", "photo_iconic_train_r@1", "unseen_photo_iconic_r@1", "unseen_photo_iconic_heldout_only_r@1", "unseen_train_photo_iconic_r@1",
            "size_mb", "latency_ms_2t", "parity_cos_mean"]
    print(f"{'model':50s} " + " ".join(f"{c.replace('photo_', '')[:14]:>14s}" for c in cols))
    for r in results:
        print(f"{r['model'][:50]:50s} " + " ".join(f"{r[c]:14.3f}" if isinstance(r.get(c), float) else f"{'-':>14s}" for c in cols))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model_id": manifest.embedder.model_id if manifest.embedder else None, "held_out_products": sorted(held),
        "queries": "Grocery Store val photos (296); the held-out run's seen rows exclude its held-out products; unseen_* rows query the held-out products' val photos (unseen_train_* rows: their train-split photos, with the iconic + train catalog on)",
        "load_average_at_end": os.getloadavg(), "rows": results,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


def latency_report(bundles: list[Path], out: Path | None) -> None:
    rows = compare_latency(bundles)
    cols = ("size_mb", "latency_ms_1t", "latency_ms_2t", "parity_cos_mean")
    print(f"{'bundle / artifact':60s} " + " ".join(f"{c:>16s}" for c in cols))
    for r in rows:
        print(f"{(r['bundle'] + ' / ' + r['artifact'])[:60]:60s} " + " ".join(f"{r[c]:16.4f}" if isinstance(r.get(c), float) else f"{'-':>16s}" for c in cols))
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (compare rows of one run; on a shared machine absolute ms are high)")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": rows, "load_average_at_end": load, "threads": "1 and 2 (TFLite XNNPACK)", "input": "one crop at the artifact's input size, already sized"}, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
