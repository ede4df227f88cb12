"""Make ultralytics safe to import on a machine without internet (and quiet on one with it).

ultralytics phones home in several ways: settings sync (analytics), pip
auto-install of missing packages, and a download of ``Arial.ttf`` from GitHub
whenever ``data=`` is used, even with offline mode on. ``prepare_ultralytics``
must run before the first ``import ultralytics``; every converter calls it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from shoplens.settings import get_settings

_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
#: ultralytics settings turned off: analytics sync, and the training integrations that report to a service
#: (or, for Ray Tune, import ray and warn outside a Tune session: ``shoplens[ray]`` installs ray)
_OFF_SETTINGS = ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "wandb")


def _find_any_ttf() -> Path | None:
    try:  # matplotlib ships DejaVuSans and is an ultralytics dependency
        import matplotlib

        cand = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        if cand.is_file():
            return cand
    except Exception:  # noqa: BLE001 - any failure just means: look elsewhere
        pass
    for d in ("/usr/share/fonts", "/usr/local/share/fonts"):
        for f in sorted(Path(d).rglob("*.ttf")) if Path(d).is_dir() else []:
            return f
    return None


def ultralytics_config_dir() -> Path:
    return get_settings().cache_dir / "ultralytics"


def prepare_ultralytics() -> Path:
    """Set the env and files ultralytics reads at import; idempotent. Returns the config dir."""
    cfg = ultralytics_config_dir()
    (cfg / "Ultralytics").mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    font = _find_any_ttf()
    for name in _FONT_NAMES:
        target = cfg / "Ultralytics" / name
        if not target.exists() and font is not None:
            shutil.copyfile(font, target)
    import json

    settings_file = cfg / "Ultralytics" / "settings.json"
    data: dict = {}
    if settings_file.is_file():
        try:
            data = json.loads(settings_file.read_text())
        except (OSError, json.JSONDecodeError):
            data = {}
    if any(data.get(key) is not False for key in _OFF_SETTINGS):
        data.update(dict.fromkeys(_OFF_SETTINGS, False))
        settings_file.write_text(json.dumps(data, indent=2))
    if "ultralytics" in __import__("sys").modules:  # already imported: flip the live settings too
        from ultralytics.utils import SETTINGS

        if any(SETTINGS.get(key) for key in _OFF_SETTINGS):
            SETTINGS.update(dict.fromkeys(_OFF_SETTINGS, False))
    return cfg
