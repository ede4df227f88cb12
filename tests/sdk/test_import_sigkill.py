"""SIGKILL `shoplens index` mid-run, rerun: the index equals a clean run's, with no duplicates."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from live_service import ADMIN_KEY, live_service

N_IMAGES = 240


def _catalog(tmp: Path, grocery_dir: Path) -> Path:
    lines = (grocery_dir / "train.txt").read_text().splitlines()[:N_IMAGES]
    rows = [{"product_id": f"p{line.split(',')[1].strip()}", "image": str(grocery_dir / line.split(",")[0].strip())} for line in lines]
    cat = tmp / "catalog.jsonl"
    cat.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return cat


def _index_cmd(cat: Path, bundle: Path, url: str, state: Path) -> list[str]:
    return [sys.executable, "-m", "shoplens", "index", "--catalog", str(cat), "--embedder", str(bundle), "--no-detector", "--server", url, "--api-key", ADMIN_KEY, "--state", str(state), "--batch-size", "16", "--no-progress"]


def _done(state: Path) -> int:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM done").fetchone()[0])
    except sqlite3.Error:
        return 0


def _snapshot(url: str, products: set[str]) -> dict[str, list[str]]:
    h = {"Authorization": f"Bearer {ADMIN_KEY}"}
    out = {}
    for p in sorted(products):
        r = httpx.get(f"{url}/v1/catalog/products/{p}", headers=h, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        images = body["images"] if isinstance(body, dict) else body
        ids = [img["image_id"] for img in images]
        assert len(ids) == len(set(ids)), f"duplicate image ids for {p}"
        out[p] = sorted(ids)
    return out


@pytest.mark.slow
def test_sigkill_mid_import_then_rerun(tmp_path: Path, grocery_dir: Path, mobilenet_bundle: Path) -> None:
    bundle = mobilenet_bundle
    cat = _catalog(tmp_path, grocery_dir)
    products = {json.loads(line)["product_id"] for line in cat.read_text().splitlines()}

    with live_service(tmp_path / "killed.db") as url:
        state = tmp_path / "killed-state.db"
        proc = subprocess.Popen(_index_cmd(cat, bundle, url, state), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while _done(state) < 32 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the import finished before it could be killed: make the catalog bigger"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = _done(state)
        assert 0 < killed_at < N_IMAGES
        rerun = subprocess.run(_index_cmd(cat, bundle, url, state), capture_output=True, text=True, timeout=300, env=None)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert f"{killed_at} already indexed" in rerun.stdout.replace("\n", " ")
        resumed = _snapshot(url, products)
        rows = httpx.get(f"{url}/v1/stats", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()["rows"]

    with live_service(tmp_path / "clean.db") as url:
        clean_run = subprocess.run(_index_cmd(cat, bundle, url, tmp_path / "clean-state.db"), capture_output=True, text=True, timeout=300)
        assert clean_run.returncode == 0, clean_run.stdout
        clean = _snapshot(url, products)
        clean_rows = httpx.get(f"{url}/v1/stats", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()["rows"]

    assert resumed == clean and rows == clean_rows
