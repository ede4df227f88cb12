"""Nothing in shoplens reaches beyond loopback: not on import, not when ultralytics runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import netguard

TESTS = Path(__file__).resolve().parents[1]


def test_guard_refuses_and_records_outbound() -> None:
    before = len(netguard.ATTEMPTS)
    with pytest.raises(ConnectionRefusedError, match="loopback only"):
        socket.create_connection(("203.0.113.7", 443), timeout=0.5)
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("example.com", 443)
    assert len(netguard.ATTEMPTS) == before + 2
    del netguard.ATTEMPTS[before:]  # these two were ours, on purpose


def test_guard_allows_loopback() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        with socket.create_connection(srv.getsockname(), timeout=2):
            pass
    finally:
        srv.close()


_PROBE = r"""
import sys
sys.path.insert(0, {tests!r})
import netguard
netguard.install()
import shoplens, shoplens.contract, shoplens.cloud, shoplens.sdk, shoplens.converters, shoplens.cli
from shoplens.offline import prepare_ultralytics
prepare_ultralytics()
from ultralytics import YOLO
model = YOLO({weights!r})
res = model.predict({image!r}, imgsz=320, verbose=False)
assert len(res) == 1
print("ATTEMPTS", netguard.ATTEMPTS)
"""


@pytest.mark.slow
def test_import_and_ultralytics_predict_stay_offline(yolov8n_path: Path, coco8_dir: Path, tmp_path: Path) -> None:
    """A fresh process: import everything, load YOLO, predict; no outbound socket, no DNS."""
    image = sorted((coco8_dir / "images" / "val").glob("*.jpg"))[0]
    code = _PROBE.format(tests=str(TESTS), weights=str(yolov8n_path), image=str(image))
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env["SHOPLENS_CACHE_DIR"] = str(tmp_path)  # a fresh config dir: the font must be placed, not fetched
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ATTEMPTS []" in res.stdout, res.stdout
    assert (tmp_path / "ultralytics" / "Ultralytics" / "Arial.ttf").is_file()
