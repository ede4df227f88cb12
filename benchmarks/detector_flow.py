"""The detector in the phone's flow: which boxes to search, measured on the Grocery Store val photos.

Usage: .venv/bin/python benchmarks/detector_flow.py [--mosaics 100] [--seed 0] [--photos 296]

Why: the object-choice rule (``detector.object_choice`` in the detector manifest) decides what a
phone embeds and searches; its default values are chosen here, on the **val** photos only. With
the shipped bundles (``mobile_assets/``: the detector and the embedder, LiteRT, the SDK's own
``plan_regions`` / ``crop_with_margin`` / ``fuse_hits``), for a grid of rules:

- **val photos** (one product each): product-level R@1 / R@5 of the photo's answer (every searched
  object's results merged per product, best score wins: ``fuse_hits``) against the whole photo
  embedded alone; how many photos used a detection; vectors sent per photo.
- **2x2 mosaics** of 4 val photos of 4 different products (seeded): the share of the 4 products
  that some searched object (a box or the whole photo) has as its top-1; beside it, each tile
  embedded alone (the ceiling a perfect box per tile would reach).

Catalog: the 81 iconic images + the train photos, embedded whole (as the demo indexes them),
searched brute force by cosine with the best image per product (what the service returns per
product), top 5. Catalog vectors are cached under ``<cache>/benchmarks/detector_flow/``.
Writes ``benchmarks/results/detector_flow.json``; the row marked ``rule = manifest`` is the rule
the shipped detector manifest carries.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from shoplens.contract.manifest import ObjectChoice  # noqa: E402
from shoplens.demo.grocery import load_grocery  # noqa: E402
from shoplens.resources import grocery_store  # noqa: E402
from shoplens.sdk.images import load_rgb  # noqa: E402
from shoplens.sdk.runtime import Detector, Embedder, Region, fuse_hits, plan_regions, region_pixels, resolve_bundles  # noqa: E402
from shoplens.settings import get_settings  # noqa: E402

NAME = "detector_flow"
TOP_K = 5
MIN_BOXES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
MAX_OBJECTS = (1, 4, 8)
#: the flow may cost at most this much R@1 against the whole photo (issue 31's target)
MAX_LOSS = 0.005
#: most boxes a chosen rule may search: with the whole photo that is 5 embeddings per photo on the phone
#: (the 8-box rows show what more would buy)
BOX_BUDGET = 4


@dataclass(frozen=True)
class Hit:
    """A product in a result list (the fields ``fuse_hits`` reads, as in ProductHit)."""

    product_id: str
    score: float


class Catalog:
    """Catalog vectors and brute-force product search (best image per product, top k)."""

    def __init__(self, vectors: np.ndarray, products: list[str]) -> None:
        self.names = sorted(set(products))
        index = {p: i for i, p in enumerate(self.names)}
        self.vectors = vectors.astype(np.float32)
        self.owner = np.array([index[p] for p in products])

    def search(self, vector: np.ndarray, top_k: int = TOP_K) -> list[Hit]:
        sims = self.vectors @ vector.astype(np.float32)
        best = np.full(len(self.names), -np.inf, dtype=np.float32)
        np.maximum.at(best, self.owner, sims)
        order = np.argsort(-best, kind="stable")[:top_k]
        return [Hit(self.names[i], float(best[i])) for i in order]


def catalog_vectors(embedder: Embedder, items: list[tuple[Path, str]]) -> np.ndarray:
    """The catalog embedded whole, cached per model and file list (the slowest step: ~2,700 images)."""
    key = hashlib.sha256((embedder.model_id + "\n" + "\n".join(str(p) for p, _ in items)).encode()).hexdigest()[:16]
    cache = get_settings().cache_dir / "benchmarks" / NAME / f"catalog-{embedder.model_id}-{key}.npy"
    if cache.is_file():
        return np.load(cache)
    t0 = time.perf_counter()
    vecs = np.stack([embedder.embed(load_rgb(p)) for p, _ in items])
    print(f"embedded {len(items)} catalog images in {time.perf_counter() - t0:.0f} s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vecs)
    return vecs


class Photo:
    """One query image: detected once; each region embedded once, whatever rules ask for it."""

    def __init__(self, rgb: np.ndarray, detector: Detector, embedder: Embedder, catalog: Catalog) -> None:
        self.rgb, self.embedder, self.catalog, self.detector = rgb, embedder, catalog, detector
        raw, geo = detector.infer(rgb)
        self.dets = detector.decode(raw, geo)
        self._hits: dict[tuple[str, tuple[float, ...]], list[Hit]] = {}

    def hits(self, region: Region, choice: ObjectChoice) -> list[Hit]:
        key = (region.source, region.box)
        if key not in self._hits:
            self._hits[key] = self.catalog.search(self.embedder.embed(region_pixels(self.rgb, region, choice)))
        return self._hits[key]

    def run(self, choice: ObjectChoice) -> tuple[list[Region], list[list[Hit]]]:
        """The flow under ``choice``: the regions searched and each one's results."""
        h, w = self.rgb.shape[:2]
        regions = plan_regions(self.dets, (w, h), choice, self.detector.class_names)
        return regions, [self.hits(r, choice) for r in regions]

    def whole(self) -> list[Hit]:
        h, w = self.rgb.shape[:2]
        return self.hits(Region((0.0, 0.0, float(w), float(h)), "", 0.0, "whole_image"), ObjectChoice())


def mosaics(val: list[tuple[Path, str]], count: int, seed: int) -> list[list[tuple[Path, str]]]:
    """``count`` sets of 4 val photos of 4 different products, seeded."""
    rng = random.Random(seed)
    by_product: dict[str, list[Path]] = {}
    for path, pid in val:
        by_product.setdefault(pid, []).append(path)
    products = sorted(by_product)
    out = []
    for _ in range(count):
        picked = rng.sample(products, 4)
        out.append([(rng.choice(by_product[p]), p) for p in picked])
    return out


def mosaic_tile(path: Path, side: int) -> np.ndarray:
    """A val photo as a ``side`` x ``side`` tile (the val photos are square; 348 px keeps them as they are)."""
    from PIL import Image

    rgb = load_rgb(path)
    return rgb if rgb.shape[:2] == (side, side) else np.asarray(Image.fromarray(rgb).resize((side, side), Image.BILINEAR))


def mosaic_rgb(tiles: list[tuple[Path, str]], side: int) -> np.ndarray:
    """2x2 grid of the tiles, in order: top left, top right, bottom left, bottom right."""
    canvas = np.zeros((2 * side, 2 * side, 3), np.uint8)
    for k, (path, _) in enumerate(tiles):
        y, x = divmod(k, 2)
        canvas[y * side : (y + 1) * side, x * side : (x + 1) * side] = mosaic_tile(path, side)
    return canvas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[1] / "mobile_assets")
    ap.add_argument("--photos", type=int, default=296, help="val photos (all 296 by default)")
    ap.add_argument("--mosaics", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tile", type=int, default=348, help="side of a mosaic tile in pixels (the val photos are 348 x 348)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    data = load_grocery(grocery_store().require())
    emb_dir, det_dir = resolve_bundles(args.bundle)
    if det_dir is None:
        raise SystemExit(f"no detector bundle under {args.bundle}")
    embedder, detector = Embedder(emb_dir), Detector(det_dir)
    shipped = detector.spec.object_choice
    items = [(p.iconic, p.product_id) for p in data.products] + list(data.train)
    catalog = Catalog(catalog_vectors(embedder, items), [pid for _, pid in items])
    val = data.val[: args.photos]
    groups = mosaics(data.val, args.mosaics, args.seed)

    rules = [shipped.model_copy(update={"min_box_fraction": mb, "max_objects": mo, "search_whole_photo": whole})
             for whole in (False, True) for mo in MAX_OBJECTS for mb in MIN_BOXES]
    if shipped not in rules:
        rules.append(shipped)

    per_rule: dict[int, dict[str, float]] = {i: {"r1": 0, "r5": 0, "used": 0, "vectors": 0, "found": 0, "mosaic_vectors": 0} for i in range(len(rules))}
    whole_r1 = whole_r5 = 0
    t0 = time.perf_counter()
    for n, (path, expected) in enumerate(val, start=1):
        photo = Photo(load_rgb(path), detector, embedder, catalog)
        ranked = [h.product_id for h in photo.whole()]
        whole_r1 += ranked[0] == expected
        whole_r5 += expected in ranked
        for i, rule in enumerate(rules):
            regions, hit_lists = photo.run(rule)
            answer = [h.product_id for h in fuse_hits(hit_lists, TOP_K)]
            acc = per_rule[i]
            acc["r1"] += answer[0] == expected
            acc["r5"] += expected in answer
            acc["used"] += any(r.source == "detector" for r in regions)
            acc["vectors"] += len(regions)
        if n % 50 == 0:
            print(f"val photos: {n}/{len(val)} ({time.perf_counter() - t0:.0f} s)", flush=True)

    tiles_alone = mosaic_whole = 0
    t0 = time.perf_counter()
    for n, tiles in enumerate(groups, start=1):
        wanted = {pid for _, pid in tiles}
        for tile, pid in tiles:
            tiles_alone += catalog.search(embedder.embed(mosaic_tile(tile, args.tile)))[0].product_id == pid
        photo = Photo(mosaic_rgb(tiles, args.tile), detector, embedder, catalog)
        mosaic_whole += photo.whole()[0].product_id in wanted
        for i, rule in enumerate(rules):
            regions, hit_lists = photo.run(rule)
            acc = per_rule[i]
            acc["found"] += len(wanted & {hits[0].product_id for hits in hit_lists if hits})
            acc["mosaic_vectors"] += len(regions)
        if n % 25 == 0:
            print(f"mosaics: {n}/{len(groups)} ({time.perf_counter() - t0:.0f} s)", flush=True)

    nv, nm = len(val), len(groups)
    base = {"rule": "whole photo, no detector", "min_box_fraction": None, "max_objects": None, "search_whole_photo": None,
            "val_r@1": whole_r1 / nv, "val_r@5": whole_r5 / nv, "val_gain_vs_whole": 0.0, "val_detector_used": 0.0, "vectors_per_photo": 1.0,
            "mosaic_found": mosaic_whole / (4 * nm), "mosaic_vectors": 1.0, "mosaic_tiles_alone": tiles_alone / (4 * nm)}
    rows: list[dict[str, Any]] = [base]
    for i, rule in enumerate(rules):
        acc = per_rule[i]
        rows.append({
            "rule": "manifest" if rule == shipped else "",
            "min_box_fraction": rule.min_box_fraction, "max_objects": rule.max_objects, "search_whole_photo": rule.search_whole_photo,
            "val_r@1": acc["r1"] / nv, "val_r@5": acc["r5"] / nv, "val_gain_vs_whole": (acc["r1"] - whole_r1) / nv,
            "val_detector_used": acc["used"] / nv, "vectors_per_photo": acc["vectors"] / nv,
            "mosaic_found": acc["found"] / (4 * nm), "mosaic_vectors": acc["mosaic_vectors"] / nm,
        })
    mine = next(r for r in rows if r["rule"] == "manifest")
    # the choice the defaults follow: within the box budget, never worse than the whole photo (within MAX_LOSS) on val,
    # then the most mosaic products found, then the best val R@1, then the fewest vectors
    eligible = [r for r in rows[1:] if r["val_gain_vs_whole"] >= -MAX_LOSS - 1e-9 and r["max_objects"] <= BOX_BUDGET]
    best = max(eligible, key=lambda r: (round(r["mosaic_found"], 6), round(r["val_r@1"], 6), -r["vectors_per_photo"])) if eligible else None
    notes = [
        f"catalog: {len(data.products)} iconic images + {len(data.train)} train photos embedded whole by {embedder.model_id} ({embedder.artifact.file}); "
        f"brute-force cosine, best image per product, top {TOP_K}; queries: {nv} val photos",
        f"detector {det_dir.name} ({detector.artifact.file}), the manifest's thresholds (conf {detector.spec.conf_threshold}, IoU {detector.spec.iou_threshold}); "
        f"crop margin {shipped.crop_margin:g}, ignored labels {shipped.ignore_labels}",
        "val_r@1: the photo's answer is every searched object's results merged per product (best score wins, shoplens.sdk.runtime.fuse_hits); "
        "without search_whole_photo and with one box that is the box's own results",
        "the flow before the rule: the SDK's FlowOptions (min box 0.01, the first box's results) is the row 0.01 / 1 / no whole photo; the demo's is 0.3 / 1 / no; "
        "the SDK's on a mosaic with max_objects 4 is 0.01 / 4 / no",
        f"mosaics: {nm} 2x2 grids of 4 val photos of 4 different products (seed {args.seed}), tiles {args.tile} px; mosaic_found: share of the 4 products "
        "that some searched object (a box or the whole photo) has as its top-1 (whole-photo row: the mosaic's own top-1); "
        "mosaic_tiles_alone: each tile embedded by itself (what a perfect box per tile would reach)",
        f"rule = manifest: the shipped manifest's object_choice {shipped.model_dump()}",
        (f"best rule by the selection (at most {BOX_BUDGET} boxes, val R@1 within {MAX_LOSS * 100:g} point of the whole photo, then most mosaic products found, "
         "then best val R@1, then fewest vectors): "
         f"min_box_fraction {best['min_box_fraction']}, max_objects {best['max_objects']}, search_whole_photo {best['search_whole_photo']}" if best else "no rule is within the loss bound"),
        f"took {time.perf_counter() - t_start:.0f} s",
    ]
    targets = [
        {"metric": "val R@1 change vs whole photo at the manifest's rule (points)", "target": f">= {-MAX_LOSS * 100:g}",
         "value": round(mine["val_gain_vs_whole"] * 100, 2)},
        {"metric": "mosaic products found at the manifest's rule", "target": ">= 0.75", "value": round(mine["mosaic_found"], 3)},
        {"metric": "manifest rule is the selection's best", "target": "yes", "met": best is not None and best is mine, "value": best is mine},
    ]
    write_result(NAME, rows, notes=notes, targets=targets,
                 print_columns=["rule", "min_box_fraction", "max_objects", "search_whole_photo", "val_r@1", "val_detector_used", "mosaic_found", "vectors_per_photo"])


if __name__ == "__main__":
    main()
