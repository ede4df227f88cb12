"""The browser device page (/app) in real headless Chromium against the real service on 127.0.0.1.

Chromium is Debian's (`apt-get install chromium`; .ci/run installs it), driven by Playwright for
Python. The page runs the shipped TFLite bundles with LiteRT.js (WASM) and searches the catalog of
the demo (the 81 products' iconic images, indexed with the same bundles by `shoplens index`).
Checked on 20 real val photos: the page's vectors against the Python SDK's for the same objects
(the same box in both), the top-1 product against the SDK's search, and every request the page
made (no image bytes leave it). Objects are matched by box, not by position in the list: LiteRT.js
and the SDK's LiteRT run the int8 detector with slightly different arithmetic, and a box one
quantisation step of score away from another's rank (score x area) may be chosen on one side only.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))
from live_service import ADMIN_KEY, DEVICE_KEY, live_service  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("SHOPLENS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
N_PHOTOS = 20
MATCH_IOU = 0.9  # the page's box and the SDK's are the same detection


def _chromium() -> str:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's (apt-get install -y chromium; .ci/run does) or set SHOPLENS_CHROMIUM")
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (the dev extra)")
    return CHROMIUM


def iconic_catalog(grocery_dir: Path, out: Path) -> Path:
    """The demo's catalog products: each of the 81 products' iconic image (product id = class name)."""
    rows = [
        {"product_id": r["Class Name (str)"], "image": str(grocery_dir / r["Iconic Image Path (str)"].lstrip("/")),
         "title": r["Class Name (str)"], "category": r["Coarse Class Name (str)"]}
        for r in csv.DictReader((grocery_dir / "classes.csv").open(encoding="utf-8"))
    ]
    out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return out


def val_photos(grocery_dir: Path, n: int = N_PHOTOS) -> list[Path]:
    lines = [ln.split(",")[0].strip() for ln in (grocery_dir / "val.txt").read_text().splitlines() if ln.strip()]
    return [grocery_dir / p for p in lines[:: len(lines) // n][:n]]


class BrowserDevice:
    """The /app page in headless Chromium, with every request it makes recorded."""

    def __init__(self, url: str, chromium: str, key: str = DEVICE_KEY) -> None:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        self.page = self.browser.new_page()
        self.requests: list[dict] = []
        self.console: list[str] = []
        self.page.on("request", lambda r: self.requests.append({"method": r.method, "url": r.url, "body": r.post_data_buffer}))
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.goto(url + "/app")
        # selectors, not wait_for_function: the page's CSP forbids eval, which that would need
        self.page.wait_for_selector('#status[data-state="ready"], #status[data-state="error"]', timeout=120_000)
        status = self.page.inner_text("#status")
        assert self.page.get_attribute("#status", "data-state") == "ready", f"{status}\n" + "\n".join(self.console[-20:])
        self.page.fill("#key", key)
        self.seq = 0

    def search(self, photo: Path) -> dict:
        self.seq += 1
        self.page.set_input_files("#photo", str(photo))
        self.page.wait_for_selector(f'#status[data-seq="{self.seq}"]', state="attached", timeout=120_000)
        last = self.page.evaluate("window.shoplensLast")
        assert "error" not in last, f"{photo.name}: {last.get('error')}\n" + "\n".join(self.console[-20:])
        return last

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


@pytest.mark.slow
def test_browser_device_matches_the_sdk_and_sends_only_vectors(tmp_path: Path, grocery_dir: Path) -> None:
    chromium = _chromium()
    from shoplens.sdk.client import ShoplensClient
    from shoplens.sdk.runtime import DeviceRuntime
    from shoplens.sdk.yolo_decode import box_iou

    catalog = iconic_catalog(grocery_dir, tmp_path / "catalog.jsonl")
    photos = val_photos(grocery_dir)
    with live_service(tmp_path / "catalog.db", extra_env={"SHOPLENS_APP_BUNDLES": str(ROOT / "mobile_assets")}) as url:
        res = subprocess.run(
            [sys.executable, "-m", "shoplens", "index", "--catalog", str(catalog), "--embedder", str(ROOT / "mobile_assets" / "resnet50v2-s3-256"),
             "--detector", str(ROOT / "mobile_assets" / "yolov8n"), "--server", url, "--api-key", ADMIN_KEY, "--state", str(tmp_path / "state.db"), "--no-progress"],
            capture_output=True, text=True, timeout=300,
        )
        assert res.returncode == 0, res.stdout + res.stderr

        rt = DeviceRuntime.from_bundle(ROOT / "mobile_assets")
        device = BrowserDevice(url, chromium)
        cosines, same_top1, same_objects, sdk_objects, unmatched = [], 0, 0, 0, []
        try:
            with ShoplensClient(url, DEVICE_KEY) as client:
                for photo in photos:
                    web = device.search(photo)
                    sdk, sdk_response = rt.search(photo, client, top_k=5)
                    same_objects += len(web["objects"]) == len(sdk.objects)
                    ious = box_iou(np.asarray([o.box for o in sdk.objects], dtype=np.float64),
                                   np.asarray([o["box"] for o in web["objects"]], dtype=np.float64))
                    for obj, iou in zip(sdk.objects, ious):
                        sdk_objects += 1
                        if iou.max() < MATCH_IOU:
                            unmatched.append((photo.name, obj.label, obj.score))
                            continue
                        v_web = np.asarray(web["objects"][int(iou.argmax())]["vector"], dtype=np.float64)
                        cosines.append(float(v_web @ obj.vector / np.linalg.norm(v_web)))
                    web_top1 = web["response"]["results"][0]["hits"][0]["product_id"]
                    same_top1 += web_top1 == sdk_response.results[0].hits[0].product_id
                    # the page's own rendering shows the hits
                    assert device.page.locator(f".hit[data-product-id={json.dumps(web_top1)}]").count() >= 1
            # /docs comes from the vendored Swagger UI, not a CDN
            device.page.goto(url + "/docs")
            device.page.wait_for_selector(".swagger-ui .info", timeout=30_000)
        finally:
            device.close()

    print(f"browser vs SDK on {len(photos)} val photos: {len(cosines)} of {sdk_objects} SDK objects have the page's box, "
          f"cos mean {np.mean(cosines):.5f} min {min(cosines):.5f}; same top-1 product {same_top1}/{len(photos)}; "
          f"same object count {same_objects}/{len(photos)}; unmatched {unmatched}")
    assert min(cosines) >= 0.99, cosines  # the same box gives the same vector
    assert len(cosines) >= 0.9 * sdk_objects, unmatched  # and the page chooses the SDK's boxes
    assert same_objects >= 0.9 * len(photos)
    assert same_top1 / len(photos) >= 0.95

    # the network: only this origin; every POST is a search with vectors + model id, nothing else
    posts = [r for r in device.requests if r["method"] != "GET"]
    assert len(posts) == len(photos)
    assert all(r["url"].startswith(url + "/") for r in device.requests), {r["url"] for r in device.requests if not r["url"].startswith(url)}
    jpeg_markers = [base64.b64encode(p.read_bytes()[:48]).decode()[:40] for p in photos]
    for r in posts:
        assert r["method"] == "POST" and r["url"] == url + "/v1/search/batch"
        body = json.loads(r["body"])
        assert set(body) == {"model_id", "encoding", "vectors", "top_k"}
        assert body["encoding"] == "i8" and body["model_id"] == rt.embedder.model_id
        assert all(len(v) == 344 and len(base64.b64decode(v)) == 256 for v in body["vectors"])
        assert len(r["body"]) < 2000
        raw = r["body"].decode()
        assert "/9j/" not in raw and not any(m in raw for m in jpeg_markers)
    gets = {r["url"][len(url):] for r in device.requests if r["method"] == "GET"}
    assert not any(g.startswith("/v1/") for g in gets), gets  # photos are never fetched or uploaded another way
