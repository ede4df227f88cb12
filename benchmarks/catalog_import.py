"""Catalog import throughput: images/s with 1 and 2 worker processes, same bundle, same images.

Usage: .venv/bin/python benchmarks/catalog_import.py [--bundle mobile_assets] [--images 400]

Writes go to an in-memory sink, so this measures reading, hashing, detection,
cropping and embedding: the part that scales with workers (Milvus upserts are
measured by benchmarks/cloud_search.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from shoplens.contract.manifest import load_manifest  # noqa: E402
from shoplens.demo.grocery import catalog_entries, load_grocery, reference_embedder  # noqa: E402
from shoplens.resources import grocery_store  # noqa: E402
from shoplens.sdk.importer import import_catalog  # noqa: E402
from shoplens.sdk.runtime import resolve_bundles  # noqa: E402


class NullSink:
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.n = 0

    def upsert(self, images) -> None:  # type: ignore[no-untyped-def]
        self.n += len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[1] / "mobile_assets")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--configs", default="1x1,2x1,1x2", help="workers x LiteRT threads per worker")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shoplens-import-bench-"))
    embedder, detector = resolve_bundles(args.bundle, embedder_required=False)
    embedder = embedder or reference_embedder(work)
    model_id = load_manifest(embedder).embedder.model_id  # type: ignore[union-attr]
    entries = catalog_entries(load_grocery(grocery_store().require()))[: args.images]
    rows = []
    for cfg in args.configs.split(","):
        w, t = (int(x) for x in cfg.split("x"))
        sink = NullSink(model_id)
        s = import_catalog(entries, embedder=embedder, detector=detector, sink=sink, state_path=work / f"state-{cfg}.db", workers=w, threads=t, batch_size=64, progress=False)
        rows.append({"workers": w, "threads_per_worker": t, "images": s.imported, "seconds": s.seconds, "images_per_s": s.images_per_s, "embedder": embedder.name, "detector": detector.name if detector else "none"})
    base = rows[0]["images_per_s"]
    for r in rows:
        r["speedup"] = r["images_per_s"] / base
    write_result("catalog_import", rows, notes=["each run starts from an empty resume ledger; worker start-up (interpreter load) is included", "speedup is relative to the first configuration (1 worker, 1 LiteRT thread)"], targets=[{"metric": "speedup with 2 workers", "target": ">= 1.7x"}])


if __name__ == "__main__":
    main()
