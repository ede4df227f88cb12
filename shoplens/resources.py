"""Finding weights and datasets: explicit path -> env dir -> ../shared beside the checkout -> cache -> download.

No file is ever fetched when offline; a missing file is a clear error that
names the file and every place that was searched, so a user knows where to
put it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from shoplens.contract.errors import ShoplensError
from shoplens.settings import REPO_ROOT, get_settings


class ResourceNotFound(ShoplensError, FileNotFoundError):
    """A weights file or dataset that is nowhere to be found (and cannot be downloaded)."""


@dataclass
class Lookup:
    """The result of a search: the path found, or every place tried."""

    name: str
    path: Path | None
    searched: list[Path] = field(default_factory=list)

    def require(self, hint: str = "") -> Path:
        if self.path is None:
            places = "\n  ".join(str(p) for p in self.searched) or "(nowhere)"
            raise ResourceNotFound(
                f"{self.name} not found. Searched:\n  {places}" + (f"\n{hint}" if hint else "")
            )
        return self.path


def shared_dir() -> Path | None:
    """``../shared`` beside the checkout (this project's CI and dev machines have it)."""
    candidates = []
    if REPO_ROOT is not None:
        candidates.append(REPO_ROOT.parent / "shared")
    candidates.append(Path.cwd().parent / "shared")
    for c in candidates:
        if (c / "README.md").is_file():
            return c.resolve()
    return None


def _search_dirs(kind: str) -> list[Path]:
    s = get_settings()
    dirs: list[Path] = []
    explicit = s.weights_dir if kind == "weights" else s.data_dir
    if explicit:
        dirs.append(Path(explicit))
    shared = shared_dir()
    if shared is not None:
        dirs.append(shared / ("weights" if kind == "weights" else "datasets"))
    dirs.append(s.cache_dir / kind)
    return dirs


def find_weights(name_or_path: str | os.PathLike[str]) -> Lookup:
    """Locate a weights file by path or by bare file name (e.g. ``yolov8n.pt``)."""
    p = Path(name_or_path).expanduser()
    searched: list[Path] = []
    if p.is_absolute() or p.parent != Path("."):
        return Lookup(str(name_or_path), p if p.is_file() else None, [p])
    if p.is_file():  # relative to the current directory
        return Lookup(str(name_or_path), p.resolve(), [p.resolve()])
    searched.append(p.resolve())
    for d in _search_dirs("weights"):
        cand = d / p.name
        searched.append(cand)
        if cand.is_file():
            return Lookup(str(name_or_path), cand, searched)
    return Lookup(str(name_or_path), None, searched)


def find_dataset(name: str, marker: str = "") -> Lookup:
    """Locate a dataset folder (``marker``: a file inside it that must exist)."""
    p = Path(name).expanduser()
    if p.is_absolute() or p.parent != Path("."):
        ok = p.is_dir() and (not marker or (p / marker).exists())
        return Lookup(name, p if ok else None, [p])
    searched: list[Path] = []
    for d in _search_dirs("data"):
        cand = d / name
        searched.append(cand)
        if cand.is_dir() and (not marker or (cand / marker).exists()):
            return Lookup(name, cand, searched)
    return Lookup(name, None, searched)


def grocery_store() -> Lookup:
    """The Grocery Store dataset (Klasson et al.): the demo catalog and the evaluation photos."""
    return find_dataset("grocery_store", marker="dataset/classes.csv")


def is_offline(timeout: float = 1.5) -> bool:
    """Offline unless settings say otherwise and pypi.org answers quickly.

    Only this check touches the network, and only when neither
    ``SHOPLENS_OFFLINE`` nor ``YOLO_OFFLINE`` decides it.
    """
    s = get_settings()
    if s.offline is not None:
        return s.offline
    if os.environ.get("YOLO_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return True
    try:
        with socket.create_connection(("github.com", 443), timeout=timeout):
            return False
    except OSError:
        return True


GROCERY_STORE_URL = "https://github.com/marcusklasson/GroceryStoreDataset/archive/refs/heads/master.zip"


def fetch_grocery_store() -> Path:
    """Download the Grocery Store dataset (MIT, ~120 MB) into the cache when online.

    Offline (``SHOPLENS_OFFLINE=1``, or no route to GitHub) nothing is attempted beyond that
    check, and the error says where to put the data instead.
    """
    import shutil
    import zipfile

    target = get_settings().cache_dir / "data" / "grocery_store"
    if (target / "dataset" / "classes.csv").is_file():
        return target
    places = "\n  ".join(str(p) for p in grocery_store().searched)
    if is_offline():
        raise ResourceNotFound(
            f"grocery_store not found and offline, so it cannot be downloaded from {GROCERY_STORE_URL}. Searched:\n  {places}\n"
            "Put the dataset (its dataset/ folder with classes.csv, train.txt, val.txt) in one of those places, "
            "or set SHOPLENS_DATA_DIR to a folder containing grocery_store/."
        )
    import httpx
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    part = target.parent / "grocery_store.zip.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    with httpx.stream("GET", GROCERY_STORE_URL, follow_redirects=True, timeout=60) as r, Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn()) as bar:
        r.raise_for_status()
        task = bar.add_task("downloading the Grocery Store dataset", total=int(r.headers.get("Content-Length") or 0) or None)
        with part.open("wb") as f:
            for chunk in r.iter_bytes(1 << 20):
                f.write(chunk)
                bar.advance(task, len(chunk))
    staging = target.parent / "grocery_store.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(part) as z:
        z.extractall(staging)
    (top,) = [d for d in staging.iterdir() if d.is_dir()]  # GroceryStoreDataset-master/
    if not (top / "dataset" / "classes.csv").is_file():
        raise ResourceNotFound(f"the download from {GROCERY_STORE_URL} has no dataset/classes.csv")
    shutil.rmtree(target, ignore_errors=True)
    top.rename(target)  # atomic on one filesystem: a crash never leaves half a dataset in place
    shutil.rmtree(staging, ignore_errors=True)
    part.unlink()
    return target
