"""`shoplens demo` end to end with the shipped bundles (YOLOv8n + ResNet embedder) on a few real products:
cold run, then a warm run that re-indexes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_cold_then_warm(tmp_path: Path, shared_dir: Path) -> None:
    env = {**os.environ, "SHOPLENS_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "shoplens", "demo", "--bundle", str(ROOT / "mobile_assets"), "--products", "6", "--queries", "12", "--report", str(tmp_path / "report.html"), "--no-progress"]
    cold = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert cold.returncode == 0, cold.stdout[-3000:] + cold.stderr[-3000:]
    assert "detector yolov8n" in cold.stdout.replace("\n", " ")
    assert re.search(r"latency detect \(ms\)\s+│\s+p50", cold.stdout), "the detector must run on the queries"
    new = int(re.search(r"indexed (\d+) new images", cold.stdout).group(1))
    assert new > 6 * 10  # iconic + train photos of 6 products
    r1 = lambda out: float(re.search(r"recall@1 \(product\)\s+│\s+([01]\.\d{3})", out).group(1))  # noqa: E731
    assert r1(cold.stdout) >= 0.5, cold.stdout  # 6 products: chance is 0.17
    html = (tmp_path / "report.html").read_text()
    assert html.count("class='card'") == 12 and "data:image/jpeg;base64" in html and "recall@1" in html

    warm = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert warm.returncode == 0, warm.stdout[-3000:]
    assert f"indexed 0 new images ({new} already indexed)" in warm.stdout
    assert r1(warm.stdout) == r1(cold.stdout), "same index, same queries: same recall"
