"""The shipped artifacts across runtimes: Python LiteRT (the SDK), MediaPipe Tasks, LiteRT.js in Chromium, CoreML op by op.

One row per (artifact, runtime), on the Grocery Store val photos:

- ``cos_ref_mean`` / ``cos_ref_min``: cosine to the PyTorch reference. Detector: the raw
  ``[1, 84, 8400]`` head output (boxes as fractions of the input) against ultralytics' PyTorch
  YOLOv8n on the same letterboxed input, measured here. Embedder: the fine-tuned PyTorch
  checkpoint is not on this machine (it is trained, not shipped), so the reference cosine is the
  conversion's parity report (377 real images) for the runtimes it covers, and ``cos_sdk_*``
  (cosine to the SDK's LiteRT vector on the same crop, measured here) says how far each other
  runtime is from that.
- ``top1_agree``: the same top-1 catalog product as the SDK (catalog: the 81 iconic images plus the
  train photos, embedded whole by the SDK, as the demo indexes them). Detector rows: the same first
  object as the SDK (IoU >= 0.9).
- ``ms_per_image``: this CPU (shared: compare rows of one run, not with other benchmarks), 2 threads where the runtime takes a thread count (LiteRT: yes;
  MediaPipe Python: no knob; LiteRT.js: one WASM thread, the vendored non-threaded build; CoreML op
  by op: numpy).
- ``bytes_per_query``: what leaves the device per photo (JSON body of ``/v1/search/batch``;
  344 base64 characters per object).

    .venv/bin/python benchmarks/runtimes.py [--photos 296] [--browser-photos 60] [--coreml-photos 20]

Needs the ``mediapipe`` extra, Playwright and Debian's Chromium (``/usr/bin/chromium``), the
``convert`` extra for the PyTorch detector and the CoreML evaluator; a missing runtime's rows say why.
Writes ``benchmarks/results/runtimes.json``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Service, print_table, write_result  # noqa: E402

from shoplens.contract.manifest import load_manifest  # noqa: E402
from shoplens.resources import grocery_store  # noqa: E402
from shoplens.sdk.images import load_rgb  # noqa: E402
from shoplens.sdk.runtime import DeviceRuntime, crop_with_margin  # noqa: E402
from shoplens.sdk.tensors import prepare_input  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "mobile_assets"
EMB, DET = ASSETS / "resnet50v2-s3-256", ASSETS / "yolov8n"
#: column order of the result rows (report.py charts the first numeric one: top-1 agreement)
ORDER = ("artifact", "runtime", "top1_agree", "cos_sdk_mean", "cos_sdk_min", "cos_ref_mean", "cos_ref_min",
         "ms_per_image", "threads", "bytes_per_query", "photos", "note")
ADMIN, DEVICE = "bench-admin-key-0123456789", "bench-device-key-0123456789"


def _dataset() -> Path:
    root = grocery_store().require()
    return root / "dataset" if (root / "dataset").is_dir() else root


def _split(root: Path, name: str) -> list[tuple[Path, str]]:
    names = {int(r["Class ID (int)"]): r["Class Name (str)"] for r in csv.DictReader((root / "classes.csv").open(encoding="utf-8"))}
    out = []
    for line in (root / name).read_text().splitlines():
        if line.strip():
            path, fine, _ = (x.strip() for x in line.split(","))
            out.append((root / path, names[int(fine)]))
    return out


def _crop(rgb: np.ndarray, obj: Any, margin: float) -> np.ndarray:
    """The pixels the SDK embedded for ``obj`` (``margin``: the detector manifest's crop_margin)."""
    return rgb if obj.source == "whole_image" else np.ascontiguousarray(crop_with_margin(rgb, obj.box, margin))


def _iou(a: Any, b: Any) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    return (float(np.mean(values)), float(np.min(values))) if values else (None, None)


def _body_bytes(model_id: str, encoded: list[str]) -> int:
    return len(json.dumps({"model_id": model_id, "encoding": "i8", "vectors": encoded, "top_k": 5}, separators=(",", ":")))


@contextmanager
def _service(db: Path) -> Iterator[str]:
    env = {**os.environ, "SHOPLENS_MILVUS_URI": str(db), "SHOPLENS_ADMIN_KEYS": json.dumps([ADMIN]),
           "SHOPLENS_DEVICE_KEYS": json.dumps([DEVICE]), "SHOPLENS_APP_BUNDLES": str(ASSETS)}
    service = Service(env, db.parent / "service.log")
    service.start()
    try:
        yield service.url
    finally:
        service.stop()


def browser_rows(photos: list[Path], root: Path, catalog_vecs: np.ndarray, catalog_ids: list[str], sdk: dict[Path, Any], chromium: str) -> list[dict[str, Any]]:
    """The /app page in headless Chromium: its vectors, first boxes, timings and POST bodies."""
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="shoplens-runtimes-"))
    cat = tmp / "catalog.jsonl"
    cat.write_text("\n".join(json.dumps({"product_id": r["Class Name (str)"], "image": str(root / r["Iconic Image Path (str)"].lstrip("/"))})
                             for r in csv.DictReader((root / "classes.csv").open(encoding="utf-8"))) + "\n")
    web: dict[Path, dict[str, Any]] = {}
    posts: list[int] = []
    with _service(tmp / "c.db") as url:
        subprocess.run([sys.executable, "-m", "shoplens", "index", "--catalog", str(cat), "--bundle", str(ASSETS), "--server", url,
                        "--api-key", ADMIN, "--state", str(tmp / "s.db"), "--no-progress"], check=True, capture_output=True, timeout=600)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.on("request", lambda r: posts.append(len(r.post_data_buffer or b"")) if r.method == "POST" else None)
            page.goto(url + "/app")
            page.wait_for_selector('#status[data-state="ready"]', timeout=180_000)
            page.fill("#key", DEVICE)
            for i, photo in enumerate(photos, 1):
                page.set_input_files("#photo", str(photo))
                page.wait_for_selector(f'#status[data-seq="{i}"]', state="attached", timeout=180_000)
                web[photo] = page.evaluate("window.shoplensLast")
            raws = []
            for photo in photos[:10]:  # raw detector outputs, for the cosine to PyTorch (large: a few photos)
                data = base64.b64encode(photo.read_bytes()).decode()
                raws.append(page.evaluate("async (b64) => await window.shoplens.detectRaw(b64)", data))
            browser.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return [web, posts, raws]  # type: ignore[list-item]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=296, help="val photos for the Python runtimes (296: all)")
    ap.add_argument("--browser-photos", type=int, default=60, help="val photos through the /app page in Chromium")
    ap.add_argument("--coreml-photos", type=int, default=20, help="crops through the CoreML op-by-op evaluator (about 1 s each)")
    ap.add_argument("--detector-ref-photos", type=int, default=40, help="photos for the detector's cosine to PyTorch")
    ap.add_argument("--catalog-train", type=int, default=-1, help="train photos added to the top-1 catalog (-1: all 2,640)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()

    root = _dataset()
    val = _split(root, "val.txt")
    step = max(1, len(val) // args.photos)
    photos = [p for p, _ in val[::step][: args.photos]]
    rt = DeviceRuntime.from_bundle(ASSETS, num_threads=2)
    model_id = rt.embedder.model_id
    emb_manifest, det_manifest = load_manifest(EMB), load_manifest(DET)
    notes: list[str] = []

    # the catalog: iconic images + train photos, embedded whole by the SDK
    t = time.perf_counter()
    products = list(csv.DictReader((root / "classes.csv").open(encoding="utf-8")))
    cat_items = [(root / r["Iconic Image Path (str)"].lstrip("/"), r["Class Name (str)"]) for r in products]
    train = _split(root, "train.txt")
    cat_items += train if args.catalog_train < 0 else train[:: max(1, len(train) // max(args.catalog_train, 1))][: args.catalog_train]
    catalog_vecs = np.stack([rt.embedder.embed(load_rgb(p)) for p, _ in cat_items])
    catalog_ids = [pid for _, pid in cat_items]
    notes.append(f"catalog for top-1: {len(cat_items)} images (81 iconic + train photos) embedded whole by the SDK in {time.perf_counter() - t:.0f} s")

    def top1(v: np.ndarray) -> str:
        return catalog_ids[int(np.argmax(catalog_vecs @ np.asarray(v, np.float32)))]

    # the SDK (Python LiteRT): the flow, the crops, the reference for the other runtimes
    sdk: dict[Path, Any] = {}
    crops: dict[Path, np.ndarray] = {}
    det_ms, emb_ms, bodies = [], [], []
    for p in photos:
        rgb = load_rgb(p)
        res = rt.process(rgb)
        sdk[p] = res
        crops[p] = _crop(rgb, res.objects[0], rt.choice.crop_margin)
        det_ms.append(res.timings_ms.get("detect", 0.0))
        t = time.perf_counter()
        rt.embedder.embed(crops[p])
        emb_ms.append((time.perf_counter() - t) * 1000)
        bodies.append(_body_bytes(model_id, [o.encoded for o in res.objects]))
    sdk_top1 = {p: top1(sdk[p].objects[0].vector) for p in photos}
    emb_parity = {a.file: a.parity.metrics if a.parity else {} for a in emb_manifest.artifacts}
    rows: list[dict[str, Any]] = []
    w8 = emb_parity.get("embedder_w8.tflite", {})
    rows.append({"artifact": "embedder_w8.tflite", "runtime": "Python LiteRT (SDK)", "photos": len(photos),
                 "cos_ref_mean": w8.get("cos_mean"), "cos_ref_min": w8.get("cos_min"), "cos_sdk_mean": 1.0, "cos_sdk_min": 1.0,
                 "top1_agree": 1.0, "ms_per_image": float(np.mean(emb_ms)), "threads": 2, "bytes_per_query": float(np.mean(bodies))})

    # MediaPipe Tasks: ImageEmbedder on the same crops
    try:
        from shoplens.sdk.mediapipe_tasks import MediaPipeEmbedder

        for presize, label in ((False, "MediaPipe ImageEmbedder (own resize)"), (True, "MediaPipe ImageEmbedder (pre-resized crop)")):
            cos, agree, ms = [], 0, []
            with MediaPipeEmbedder(EMB, presize=presize) as mp:
                for p in photos:
                    t = time.perf_counter()
                    v = mp.embed(crops[p])
                    ms.append((time.perf_counter() - t) * 1000)
                    cos.append(_cos(v, sdk[p].objects[0].vector))
                    agree += top1(v) == sdk_top1[p]
            mean, mn = _stats(cos)
            rows.append({"artifact": "embedder_w8.tflite", "runtime": label, "photos": len(photos), "cos_ref_mean": None, "cos_ref_min": None,
                         "cos_sdk_mean": mean, "cos_sdk_min": mn, "top1_agree": agree / len(photos), "ms_per_image": float(np.mean(ms)),
                         "threads": "default", "bytes_per_query": float(np.mean(bodies))})
    except ImportError as exc:
        notes.append(f"MediaPipe Tasks not measured: {exc}")
    rows.append({"artifact": "yolov8n_int8.tflite", "runtime": "MediaPipe ObjectDetector", "photos": 0,
                 "note": "not loadable: raw YOLOv8 head [1, 84, 8400], no TFLite_Detection_PostProcess outputs (mobile_assets/README.md)"})

    # CoreML, op by op (the converters' ML-program evaluator)
    try:
        from shoplens.converters.embedder.coreml import numeric_runner

        art = emb_manifest.artifact("coreml")
        run = numeric_runner(EMB / art.file)
        if run is None:
            raise ImportError("the ML-program evaluator is not available")
        cos, agree, ms = [], 0, []
        subset = photos[:: max(1, len(photos) // args.coreml_photos)][: args.coreml_photos]
        for p in subset:
            x, _ = prepare_input(crops[p], art.input)
            t = time.perf_counter()
            v = run(x)
            ms.append((time.perf_counter() - t) * 1000)
            v = v / np.linalg.norm(v)
            cos.append(_cos(v, sdk[p].objects[0].vector))
            agree += top1(v) == sdk_top1[p]
        mean, mn = _stats(cos)
        ref = emb_parity.get(art.file, {})
        rows.append({"artifact": art.file, "runtime": "CoreML op by op (mil_eval, fp16)", "photos": len(subset),
                     "cos_ref_mean": ref.get("cos_mean"), "cos_ref_min": ref.get("cos_min"), "cos_sdk_mean": mean, "cos_sdk_min": mn,
                     "top1_agree": agree / len(subset), "ms_per_image": float(np.mean(ms)), "threads": "numpy", "bytes_per_query": float(np.mean(bodies))})
    except Exception as exc:  # noqa: BLE001 - converters/ may be mid-restructure or without coremltools
        notes.append(f"CoreML op by op not measured: {exc}")

    # detector: Python LiteRT vs PyTorch on the raw head output
    bphotos = photos[:: max(1, len(photos) // args.browser_photos)][: args.browser_photos]
    ref_subset = photos[:: max(1, len(photos) // args.detector_ref_photos)][: args.detector_ref_photos]
    ref_subset += [p for p in bphotos[:10] if p not in ref_subset]  # the browser's raw outputs are compared too
    torch_raw: dict[Path, np.ndarray] = {}
    try:
        from shoplens.offline import prepare_ultralytics

        prepare_ultralytics()
        import torch
        from ultralytics import YOLO

        from shoplens.resources import find_weights

        torch.set_num_threads(2)
        net = YOLO(str(find_weights("yolov8n.pt").require())).model.eval()
        det_art = det_manifest.artifact("tflite")
        for p in ref_subset:
            x, _ = prepare_input(load_rgb(p), det_art.input)
            with torch.no_grad():
                out = net(torch.from_numpy(np.asarray(x, np.float32)))
            raw = (out[0] if isinstance(out, (list, tuple)) else out).numpy().copy()
            raw[:, :4] /= det_art.input.width  # PyTorch boxes are input pixels; the TFLite export's are fractions
            torch_raw[p] = raw
    except Exception as exc:  # noqa: BLE001
        notes.append(f"detector PyTorch reference not run: {exc}")
    from shoplens.sdk.runtime import Detector

    for art in [a for a in det_manifest.artifacts if a.format.value == "tflite"]:
        d = Detector(DET, art.precision.value, num_threads=2)
        cos, ms, agree = [], [], 0
        for p in photos:
            rgb = load_rgb(p)
            t = time.perf_counter()
            raw, geo = d.infer(rgb)
            dets = d.decode(raw, geo)
            ms.append((time.perf_counter() - t) * 1000)
            if p in torch_raw:
                cos.append(_cos(raw, torch_raw[p]))
            rt_sdk = sdk[p].objects[0]
            from shoplens.sdk.runtime import choose_objects

            chosen = choose_objects(dets, float(rgb.shape[0] * rgb.shape[1]), d.spec.object_choice, d.class_names)
            first = tuple(float(v) for v in dets.boxes[chosen[0]]) if chosen else None
            agree += (first is None and rt_sdk.source == "whole_image") or (first is not None and rt_sdk.source == "detector" and _iou(first, rt_sdk.box) >= 0.9)
        mean, mn = _stats(cos)
        rows.append({"artifact": art.file, "runtime": "Python LiteRT (SDK)", "photos": len(photos), "cos_ref_mean": mean, "cos_ref_min": mn,
                     "top1_agree": agree / len(photos), "ms_per_image": float(np.mean(ms)), "threads": 2})
    nms = det_manifest.artifact("coreml")
    if nms.parity:
        m = nms.parity.metrics
        rows.append({"artifact": nms.file, "runtime": "CoreML op by op (parity report)", "photos": int(m.get("images", 0)),
                     "note": f"not rerun: detections vs PyTorch match {m.get('match_rate'):.3f}, mean IoU {m.get('mean_iou'):.3f}, "
                             f"mAP50 {m.get('map50'):.3f} vs {m.get('map50_reference'):.3f}, {m.get('seconds_per_image'):.2f} s/image"})

    # LiteRT.js in Chromium (the /app page)
    if Path(args.chromium).is_file():
        web, posts, raws = browser_rows(bphotos, root, catalog_vecs, catalog_ids, sdk, args.chromium)
        cos, agree, box_agree, ems, dms = [], 0, 0, [], []
        for p in bphotos:
            w = web[p]
            v = np.asarray(w["objects"][0]["vector"], np.float32)
            cos.append(_cos(v, sdk[p].objects[0].vector))
            agree += top1(v) == sdk_top1[p]
            s0, w0 = sdk[p].objects[0], w["objects"][0]
            box_agree += s0.source == w0["source"] and (s0.source != "detector" or _iou(w0["box"], s0.box) >= 0.9)
            ems.append(w["timings"]["embed"] / len(w["objects"]))
            dms.append(w["timings"].get("detect", 0.0))
        mean, mn = _stats(cos)
        rows.append({"artifact": "embedder_w8.tflite", "runtime": "LiteRT.js 2.5.3, Chromium WASM (/app)", "photos": len(bphotos),
                     "cos_ref_mean": None, "cos_ref_min": None, "cos_sdk_mean": mean, "cos_sdk_min": mn, "top1_agree": agree / len(bphotos),
                     "ms_per_image": float(np.mean(ems)), "threads": 1, "bytes_per_query": float(np.mean(posts)) if posts else None})
        rcos = [_cos(np.frombuffer(base64.b64decode(r), np.float32), torch_raw[p]) for r, p in zip(raws, bphotos[:10]) if p in torch_raw]
        mean, mn = _stats(rcos)
        rows.append({"artifact": "yolov8n_int8.tflite", "runtime": "LiteRT.js 2.5.3, Chromium WASM (/app)", "photos": len(bphotos),
                     "cos_ref_mean": mean, "cos_ref_min": mn, "top1_agree": box_agree / len(bphotos), "ms_per_image": float(np.mean(dms)), "threads": 1})
        if not rcos:
            notes.append("LiteRT.js detector cosine to PyTorch: none of its first 10 photos were in the PyTorch subset")
    else:
        notes.append(f"LiteRT.js not measured: no Chromium at {args.chromium}")

    notes += [
        f"val photos: {len(photos)} of {len(val)} (every {step}th); model {model_id}",
        "embedder cos_ref_*: the conversion parity report (377 real images vs the PyTorch fp32 checkpoint, which is not on this machine); "
        "cos_sdk_*: cosine to the SDK's LiteRT vector on the same crop, measured here",
        "detector cos_ref_*: cosine of the raw [1, 84, 8400] output to ultralytics' PyTorch YOLOv8n on the same letterboxed input "
        f"({len(torch_raw)} photos; LiteRT.js: its first 10 photos); top1_agree: same first object as the SDK, which runs the int8 artifact (IoU >= 0.9)",
        "ms_per_image: embedder per crop, detector per photo (inference + decode); MediaPipe's Python API has no thread setting; LiteRT.js runs one WASM thread",
    ]
    rows = [{k: r[k] for k in ORDER if k in r} for r in rows]
    print_table(rows, "shipped artifacts across runtimes")
    for n in notes:
        print("-", n)
    write_result("runtimes", rows, notes=notes, targets=targets(rows))


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's bars, with the value measured in ``rows`` (None when that runtime was not run)."""
    def get(runtime_prefix: str, key: str) -> Any:
        found = [r.get(key) for r in rows if r["artifact"] == "embedder_w8.tflite" and r["runtime"].startswith(runtime_prefix)]
        return found[0] if found else None

    mp_own, mp_pre, js = "MediaPipe ImageEmbedder (own", "MediaPipe ImageEmbedder (pre", "LiteRT.js"
    # report.py reads the keys beside metric/target as runs, each checked against the target
    return [
        {"metric": "MediaPipe embedder min cos to the SDK", "target": ">= 0.995",
         "crop pre-resized (documented path)": get(mp_pre, "cos_sdk_min"), "MediaPipe's own resize": get(mp_own, "cos_sdk_min")},
        {"metric": "MediaPipe top-1 agreement with the SDK", "target": ">= 0.98",
         "crop pre-resized (documented path)": get(mp_pre, "top1_agree"), "MediaPipe's own resize": get(mp_own, "top1_agree")},
        {"metric": "LiteRT.js min cos to the SDK", "target": ">= 0.99", "Chromium (/app)": get(js, "cos_sdk_min")},
        {"metric": "LiteRT.js top-1 agreement with the SDK", "target": ">= 0.95", "Chromium (/app)": get(js, "top1_agree")},
    ]

if __name__ == "__main__":
    main()
