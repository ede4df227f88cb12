"""Weights/data discovery order and the clear error when nothing is found."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoplens.resources import ResourceNotFound, find_dataset, find_weights, grocery_store
from shoplens.settings import get_settings


def test_shared_weights_and_data_are_found(shared_dir: Path) -> None:
    assert find_weights("yolov8n.pt").require() == (shared_dir / "weights" / "yolov8n.pt").resolve()
    assert grocery_store().require() == (shared_dir / "datasets" / "grocery_store").resolve()


def test_env_dir_wins_over_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "yolov8n.pt").write_bytes(b"x")
    monkeypatch.setenv("SHOPLENS_WEIGHTS_DIR", str(tmp_path))
    get_settings.cache_clear()
    assert find_weights("yolov8n.pt").require() == tmp_path / "yolov8n.pt"


def test_explicit_path(tmp_path: Path) -> None:
    f = tmp_path / "custom.pt"
    f.write_bytes(b"x")
    assert find_weights(str(f)).require() == f
    with pytest.raises(ResourceNotFound, match="nope.pt not found"):
        find_weights(str(tmp_path / "nope.pt")).require()


def test_missing_names_every_place_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPLENS_WEIGHTS_DIR", str(tmp_path / "w"))
    get_settings.cache_clear()
    look = find_weights("yolo11n.pt")
    with pytest.raises(ResourceNotFound) as info:
        look.require(hint="download it with ultralytics when online")
    text = str(info.value)
    assert str(tmp_path / "w" / "yolo11n.pt") in text
    assert str(get_settings().cache_dir / "weights" / "yolo11n.pt") in text
    assert "when online" in text


def test_dataset_marker_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "grocery_store").mkdir()
    monkeypatch.setenv("SHOPLENS_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    # an empty folder with the right name is not the dataset: fall through to ../shared
    found = find_dataset("grocery_store", "dataset/classes.csv").path
    assert found is None or found != tmp_path / "grocery_store"


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOPLENS_MILVUS_URI", "http://127.0.0.1:19530")
    monkeypatch.setenv("SHOPLENS_ADMIN_KEYS", '["k1","k2"]')
    get_settings.cache_clear()
    s = get_settings()
    assert not s.milvus_is_lite and [k.get_secret_value() for k in s.admin_keys] == ["k1", "k2"]
    assert "k1" not in repr(s)  # secrets never print
    monkeypatch.delenv("SHOPLENS_MILVUS_URI")
    monkeypatch.setenv("SHOPLENS_CACHE_DIR", str(tmp_path))
    get_settings.cache_clear()
    assert get_settings().resolved_milvus_uri() == str(tmp_path / "milvus" / "shoplens.db")


def test_dataset_download_offline_is_a_clear_error_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import netguard

    from shoplens.resources import GROCERY_STORE_URL, fetch_grocery_store

    monkeypatch.setenv("SHOPLENS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SHOPLENS_OFFLINE", "1")
    get_settings.cache_clear()
    before = len(netguard.ATTEMPTS)
    with pytest.raises(ResourceNotFound, match="offline") as info:
        fetch_grocery_store()
    assert GROCERY_STORE_URL in str(info.value) and "SHOPLENS_DATA_DIR" in str(info.value)
    assert len(netguard.ATTEMPTS) == before, "offline must mean: not even a connection attempt"


def test_downloaded_dataset_in_the_cache_is_found_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoplens.resources import fetch_grocery_store

    (tmp_path / "data" / "grocery_store" / "dataset").mkdir(parents=True)
    (tmp_path / "data" / "grocery_store" / "dataset" / "classes.csv").write_text("x\n")
    monkeypatch.setenv("SHOPLENS_CACHE_DIR", str(tmp_path))
    get_settings.cache_clear()
    assert fetch_grocery_store() == tmp_path / "data" / "grocery_store"
