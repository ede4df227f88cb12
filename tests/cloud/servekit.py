"""Start and stop a real ``shoplens serve`` (uvicorn) subprocess on 127.0.0.1 for tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start_serve(env: dict[str, str], port: int, log: Path, *extra: str, wait_for: str = "/v1/ready",
                timeout_s: float = 60.0) -> subprocess.Popen:
    """``shoplens serve`` on ``port``, returned once ``wait_for`` answers 200.

    ``wait_for="/v1/health"`` returns as soon as the process answers, before the
    catalog is loaded: what a test of the very first requests after a start needs.
    """
    cmd = [sys.executable, "-m", "shoplens", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *extra]
    # cwd: a folder of the test's own, so no .env or package from the checkout's root is picked up by accident
    proc = subprocess.Popen(cmd, env=env, cwd=log.parent, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{wait_for}", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"serve not answering {wait_for} within {timeout_s:g} s:\n{log.read_text()[-3000:]}")


def stop_serve(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 20.0) -> float | None:
    """Send ``sig``; the seconds the process took to exit, or None if it had to be SIGKILLed."""
    if proc.poll() is not None:
        return 0.0
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=wait_s)
        return time.monotonic() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None
