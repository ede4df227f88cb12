"""The phone's flow, measured: per-stage latency, bytes uploaded, and recall per wire encoding.

Usage: .venv/bin/python benchmarks/device_flow.py [--bundle mobile_assets] [--queries 296] [--precisions int8,fp32]

Indexes the demo catalog (Grocery Store iconic + train photos) once, through the
real service on 127.0.0.1 (Milvus Lite), then runs the device flow on the val
photos for each embedder precision, and uploads the same vectors as f32, f16
and i8 to see what the encoding costs in recall. Bytes are compared with the
query JPEG as stored and with the photo re-encoded the way an app would upload
it (long side 1024 px, JPEG quality 85).
"""

from __future__ import annotations

import argparse
import io
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from shoplens.contract.codecs import Encoding, encode_vector  # noqa: E402
from shoplens.contract.manifest import load_manifest  # noqa: E402
from shoplens.demo.grocery import catalog_entries, load_grocery, reference_embedder  # noqa: E402
from shoplens.demo.service import BackgroundService, wait_until_indexed  # noqa: E402
from shoplens.resources import grocery_store  # noqa: E402
from shoplens.sdk.client import ShoplensClient  # noqa: E402
from shoplens.sdk.images import load_rgb  # noqa: E402
from shoplens.sdk.importer import ApiSink, import_catalog  # noqa: E402
from shoplens.sdk.runtime import DeviceRuntime, FlowOptions, resolve_bundles  # noqa: E402
from shoplens.settings import Settings  # noqa: E402


def app_upload_bytes(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((1024, 1024))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return len(buf.getvalue())


def pct(vals: list[float], q: float) -> float:
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(q * len(vals)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[1] / "mobile_assets")
    ap.add_argument("--queries", type=int, default=296)
    ap.add_argument("--precisions", default="", help="embedder TFLite precisions to run (default: every one in the bundle)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--min-box", type=float, default=0.3, help="a detection must cover this share of the photo (one object per query; the demo's "
                    "value when results/device_flow.json was measured; the app's rule is the detector manifest's object_choice, see detector_flow.py)")
    args = ap.parse_args()

    data = load_grocery(grocery_store().require())
    work = Path(tempfile.mkdtemp(prefix="shoplens-bench-"))
    embedder, detector = resolve_bundles(args.bundle, embedder_required=False)
    embedder = embedder or reference_embedder(work)
    manifest = load_manifest(embedder)
    model_id, dim = manifest.embedder.model_id, manifest.embedder.dim  # type: ignore[union-attr]
    tflite = [a.precision.value for a in manifest.artifacts if a.format.value == "tflite"]
    precisions = [p for p in args.precisions.split(",") if p] or tflite
    admin, device = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    settings = Settings(milvus_uri=str(work / "catalog.db"), collection="bench", admin_keys=[admin], device_keys=[device], rate_limit_per_s=1e6, rate_limit_burst=10**6)
    queries = data.val[: args.queries]
    rows, notes = [], []
    with BackgroundService(settings) as svc:
        with ShoplensClient(svc.url, admin) as ac:
            # the catalog is embedded with the bundle's default (smallest publishable) artifact, as `shoplens index` does
            # the demo's policy: catalog photos are framed on the product and indexed whole;
            # queries use a detection only when it covers --min-box of the photo
            s = import_catalog(catalog_entries(data), embedder=embedder, detector=None, sink=ApiSink(ac, model_id), state_path=work / "state.db", workers=args.workers, progress=False)
        with ShoplensClient(svc.url, device) as client:
            wait_until_indexed(client, model_id, dim)
            for precision in precisions:
                rt = DeviceRuntime.from_bundle(embedder=embedder, detector=detector, precision=precision, options=FlowOptions(max_objects=1, min_box_fraction=args.min_box, search_whole_photo=False))
                stages: dict[str, list[float]] = {}
                hits = {e: [0, 0] for e in Encoding}
                upload = {e: 0 for e in Encoding}
                for photo, expected in queries:
                    result = rt.process(photo)
                    vec = result.objects[0].vector
                    for k, v in result.timings_ms.items():
                        stages.setdefault(k, []).append(v)
                    for enc in Encoding:
                        encoded = encode_vector(vec, enc)
                        upload[enc] += len(encoded)
                        t = time.perf_counter()
                        resp = client.search(encoded, model_id=model_id, encoding=enc, top_k=5)
                        if enc is Encoding.I8:
                            stages.setdefault("http_total", []).append((time.perf_counter() - t) * 1000)
                            stages.setdefault("search_server", []).append(resp.took_ms)
                        ranked = [h.product_id for h in resp.hits]
                        hits[enc][0] += bool(ranked) and ranked[0] == expected
                        hits[enc][1] += expected in ranked
                n = len(queries)
                row = {"embedder_precision": precision, "detector": detector.name if detector else "none", "queries": n}
                for k, v in stages.items():
                    row[f"{k}_p50_ms"] = statistics.median(v)
                    row[f"{k}_p90_ms"] = pct(v, 0.9)
                for enc in Encoding:
                    row[f"r1_{enc.value}"] = hits[enc][0] / n
                    row[f"r5_{enc.value}"] = hits[enc][1] / n
                    row[f"bytes_{enc.value}"] = upload[enc] / n
                rows.append(row)
    jpeg = statistics.mean(p.stat().st_size for p, _ in queries)
    app_jpeg = statistics.mean(app_upload_bytes(p) for p, _ in queries[:100])
    i8 = rows[0]["bytes_i8"] if rows else 0
    notes.append(f"catalog: {s.imported} images of {len(data.products)} products indexed whole (as the demo does); queries crop a detection only if it covers {args.min_box:.0%} of the photo; model {model_id}; {args.workers} import workers")
    notes.append(f"query JPEG as stored: {jpeg:.0f} B (i8 vector is {jpeg / i8:.0f}x smaller); re-encoded as an app would upload it (1024 px, q85): {app_jpeg:.0f} B ({app_jpeg / i8:.0f}x)")
    notes.append("recall is product-level, queries = val photos, catalog = iconic + train photos; one object (the top detection or the whole photo) per query")
    write_result("device_flow", rows, notes=notes, targets=[{"metric": "bytes vs app JPEG with i8", "target": ">= 300x"}, {"metric": "recall@1 change f32 -> i8", "target": "<= 0.5 point"}])


if __name__ == "__main__":
    main()
