"""``shoplens doctor``: what is installed, what is found, what is reachable, and what to do about it."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import urlparse

from shoplens.extras import EXTRAS, dist_version, missing_packages
from shoplens.resources import find_dataset, find_weights, shared_dir
from shoplens.settings import REPO_ROOT, get_settings


class Status(str, Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass
class Check:
    group: str
    item: str
    status: Status
    detail: str
    fix: str = ""
    required: bool = False


#: what each --for profile needs; anything else is reported but optional
PROFILES: dict[str, set[str]] = {
    "demo": {"extra:cloud", "extra:device", "extra:convert", "weights:yolov8n.pt", "weights:resnet50_v2_imagenet_partial.npz", "data:grocery_store", "milvus"},
    "cloud": {"extra:cloud", "milvus"},
    "device": {"extra:device"},
    "convert": {"extra:convert", "weights:yolov8n.pt"},
    "core": set(),
}

WEIGHTS = ["yolov8n.pt", "resnet50_v2_imagenet_partial.npz", "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"]
DATASETS = [("grocery_store", "dataset/classes.csv"), ("scene_photos", "coco8/images")]


def _check_extras(need: set[str]) -> list[Check]:
    out = []
    for extra, pkgs in EXTRAS.items():
        missing = missing_packages(extra)
        versions = ", ".join(f"{d} {dist_version(d)}" for d, _ in pkgs if dist_version(d))
        key = f"extra:{extra}"
        if missing:
            out.append(Check("extras", extra, Status.FAIL if key in need else Status.WARN, f"missing: {', '.join(missing)}", f'pip install -e ".[{extra}]"', key in need))
        else:
            out.append(Check("extras", extra, Status.OK, versions, required=key in need))
    np_version = dist_version("numpy")
    if np_version and not np_version.startswith("2.3."):
        out.append(Check("extras", "numpy", Status.WARN, f"numpy {np_version}: ultralytics' CoreML export of YOLO needs numpy 2.3.x", 'pip install "numpy==2.3.5"'))
    return out


def _check_files(need: set[str]) -> list[Check]:
    out = []
    shared = shared_dir()
    out.append(Check("files", "shared dir", Status.OK if shared else Status.WARN, str(shared) if shared else "no ../shared beside the checkout", "set SHOPLENS_WEIGHTS_DIR / SHOPLENS_DATA_DIR" if not shared else ""))
    for name in WEIGHTS:
        key = f"weights:{name}"
        look = find_weights(name)
        if look.path:
            out.append(Check("weights", name, Status.OK, str(look.path), required=key in need))
        else:
            out.append(Check("weights", name, Status.FAIL if key in need else Status.WARN, "not found in: " + ", ".join(str(p.parent) for p in look.searched), f"put {name} in one of those folders or set SHOPLENS_WEIGHTS_DIR", key in need))
    for name, marker in DATASETS:
        key = f"data:{name}"
        look = find_dataset(name, marker)
        if look.path:
            out.append(Check("datasets", name, Status.OK, str(look.path), required=key in need))
        else:
            out.append(Check("datasets", name, Status.FAIL if key in need else Status.WARN, "not found in: " + ", ".join(str(p.parent) for p in look.searched), f"set SHOPLENS_DATA_DIR to a folder containing {name}/", key in need))
    return out


def _check_bundles() -> list[Check]:
    from shoplens.contract.errors import ManifestError
    from shoplens.contract.manifest import verify_bundle

    root = (REPO_ROOT / "mobile_assets") if REPO_ROOT else None
    if root is None or not root.is_dir():
        return []
    out = []
    for manifest in sorted(root.glob("*/manifest.json")):
        try:
            m = verify_bundle(manifest.parent)
            arts = ", ".join(f"{a.format.value}/{a.precision.value}{'' if a.publishable else ' (not publishable)'}" for a in m.artifacts)
            out.append(Check("bundles", manifest.parent.name, Status.OK, f"{m.task.value}: {arts}"))
        except ManifestError as exc:
            out.append(Check("bundles", manifest.parent.name, Status.FAIL, exc.message, "reconvert the bundle (shoplens convert ...)"))
    return out


def _tcp_reachable(uri: str, timeout: float = 2.0) -> tuple[bool, str]:
    u = urlparse(uri)
    host, port = u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 19530)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"{host}:{port} accepts connections"
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or exc}"


def _check_milvus(need: set[str]) -> list[Check]:
    s = get_settings()
    uri = s.resolved_milvus_uri()
    required = "milvus" in need
    if s.milvus_is_lite:
        if missing_packages("cloud"):
            return [Check("milvus", uri, Status.FAIL if required else Status.WARN, "Milvus Lite needs the cloud extra", 'pip install -e ".[cloud]"', required)]
        parent = Path(uri).expanduser().resolve().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            writable = os.access(parent, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            return [Check("milvus", uri, Status.FAIL if required else Status.WARN, f"Milvus Lite file's folder {parent} is not writable", "set SHOPLENS_MILVUS_URI to a writable path", required)]
        return [Check("milvus", uri, Status.OK, "Milvus Lite (embedded file, one process at a time)", required=required)]
    ok, detail = _tcp_reachable(uri)
    return [Check("milvus", uri, Status.OK if ok else (Status.FAIL if required else Status.WARN), detail, "" if ok else "start the Milvus server or fix SHOPLENS_MILVUS_URI", required)]


def _check_offline() -> list[Check]:
    s = get_settings()
    mode = "on" if s.offline else ("off" if s.offline is False else "auto (decided when a download is needed)")
    out = [Check("network", "offline mode", Status.OK, f"SHOPLENS_OFFLINE: {mode}")]
    from shoplens.offline import ultralytics_config_dir

    cfg = ultralytics_config_dir()
    font = cfg / "Ultralytics" / "Arial.ttf"
    out.append(Check("network", "ultralytics offline setup", Status.OK if font.is_file() else Status.WARN, f"YOLO_CONFIG_DIR={cfg}" + ("" if font.is_file() else " (font not placed yet)"), "" if font.is_file() else "run any shoplens convert command once, or shoplens doctor --fix"))
    return out


def run_checks(profile: str = "demo") -> list[Check]:
    need = PROFILES[profile]
    checks = _check_extras(need) + _check_files(need) + _check_bundles() + _check_milvus(need) + _check_offline()
    return checks


def failed_required(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status is Status.FAIL]
