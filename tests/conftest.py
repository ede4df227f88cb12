"""Test-session setup: offline, a private cache dir, and the loopback-only network guard."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import netguard  # noqa: E402

# Before any project import: offline everywhere, caches in a per-session folder
# (SHOPLENS_TEST_CACHE keeps expensive conversions between local runs).
_CACHE_KEPT = bool(os.environ.get("SHOPLENS_TEST_CACHE"))
_CACHE = Path(os.environ["SHOPLENS_TEST_CACHE"] if _CACHE_KEPT else tempfile.mkdtemp(prefix="shoplens-test-cache-"))
os.environ["SHOPLENS_CACHE_DIR"] = str(_CACHE)
os.environ["SHOPLENS_OFFLINE"] = "1"
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "False"
os.environ["YOLO_CONFIG_DIR"] = str(_CACHE / "ultralytics")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
netguard.install()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _CACHE_KEPT:
        shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if netguard.ATTEMPTS:
        print("\nNETWORK GUARD: non-loopback network attempts during the tests:", file=sys.stderr)
        for a in sorted(set(netguard.ATTEMPTS)):
            print(f"  {a}", file=sys.stderr)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return _CACHE


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "README.md").is_file():
        pytest.skip(f"real weights/data folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def yolov8n_path(shared_dir: Path) -> Path:
    return shared_dir / "weights" / "yolov8n.pt"


@pytest.fixture(scope="session")
def grocery_dir(shared_dir: Path) -> Path:
    return shared_dir / "datasets" / "grocery_store" / "dataset"


@pytest.fixture(scope="session")
def coco8_dir(shared_dir: Path) -> Path:
    return shared_dir / "datasets" / "scene_photos" / "coco8"


@pytest.fixture(autouse=True)
def _fresh_settings():
    """Settings are cached per process; a test that changes SHOPLENS_* env gets a fresh read."""
    from shoplens.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
