"""Start the real service (`shoplens serve`, uvicorn) on 127.0.0.1 in a subprocess, bounded in time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

ADMIN_KEY = "admin-test-key-0123456789"
DEVICE_KEY = "device-test-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_service(db: Path, *, start_timeout: float = 90.0, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "SHOPLENS_MILVUS_URI": str(db),
        "SHOPLENS_ADMIN_KEYS": f'["{ADMIN_KEY}"]',
        "SHOPLENS_DEVICE_KEYS": f'["{DEVICE_KEY}"]',
        **(extra_env or {}),
    }
    log = open(db.with_suffix(".log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "shoplens", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + start_timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"service exited with {proc.returncode}: {db.with_suffix('.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"service did not start in {start_timeout}s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
