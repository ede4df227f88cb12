"""`shoplens demo` end to end on a few real products: cold run, then a warm run that re-indexes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shoplens.sdk.wrap import wrap_tflite_embedder

MOBILENET = "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"


@pytest.mark.slow
def test_demo_cold_then_warm(tmp_path: Path, shared_dir: Path) -> None:
    bundles = tmp_path / "bundles"
    wrap_tflite_embedder(shared_dir / "weights" / MOBILENET, bundles / "mobilenet", name="mobilenet-v1-imagenet", link=True)
    env = {**os.environ, "SHOPLENS_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "shoplens", "demo", "--bundle", str(bundles), "--products", "6", "--queries", "12", "--report", str(tmp_path / "report.html"), "--no-progress"]
    cold = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert cold.returncode == 0, cold.stdout[-3000:] + cold.stderr[-3000:]
    assert re.search(r"recall@1 \(product\)\s+│\s+(0|1)\.\d{3}", cold.stdout), cold.stdout
    new = int(re.search(r"indexed (\d+) new images", cold.stdout).group(1))
    assert new > 6 * 10  # iconic + train photos of 6 products
    html = (tmp_path / "report.html").read_text()
    assert html.count("class='card'") == 12 and "data:image/jpeg;base64" in html and "recall@1" in html

    warm = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert warm.returncode == 0, warm.stdout[-3000:]
    assert f"indexed 0 new images ({new} already indexed)" in warm.stdout
    r1 = lambda out: re.search(r"recall@1 \(product\)\s+│\s+([01]\.\d{3})", out).group(1)  # noqa: E731
    assert r1(warm.stdout) == r1(cold.stdout), "same index, same queries: same recall"
