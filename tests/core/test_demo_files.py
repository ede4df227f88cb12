"""The demo never reuses a catalog filled by another embedder (the service would answer 409)."""

from __future__ import annotations

from pathlib import Path

from shoplens.demo.run import demo_files

OLD = "resnet50v2-imagenet-s3-256d-9c7649584fb5"
NEW = "resnet50v2-imagenet-s3-256d-4f282f3b978f"


def _touch(d: Path, *names: str) -> None:
    """Milvus Lite 3 keeps a catalog ``.db`` as a directory; the import ledger is a SQLite file."""
    for n in names:
        if n.startswith("catalog"):
            (d / n).mkdir()
            (d / n / "segment").write_bytes(b"x")
        else:
            (d / n).write_bytes(b"x")


def test_upgraded_bundle_starts_a_new_index_and_drops_the_old_model_files(tmp_path: Path) -> None:
    _touch(tmp_path, "catalog.db", f"import-{OLD}.db", f"catalog-{OLD}.db", f"catalog-{OLD}-10p.db", "last_summary.json")
    db, state = demo_files(tmp_path, NEW)
    assert (db.name, state.name) == (f"catalog-{NEW}.db", f"import-{NEW}.db")
    left = sorted(p.name for p in tmp_path.iterdir())
    # the old model's files (and the pre-model-id name) are gone; another subset's cache and other files stay
    assert left == [f"catalog-{OLD}-10p.db", "last_summary.json"]


def test_same_model_reuses_its_index_unless_fresh(tmp_path: Path) -> None:
    _touch(tmp_path, f"catalog-{NEW}.db", f"import-{NEW}.db")
    db, state = demo_files(tmp_path, NEW)
    assert db.exists() and state.exists()
    db, state = demo_files(tmp_path, NEW, fresh=True)
    assert not db.exists() and not state.exists()


def test_a_ledger_without_its_catalog_is_dropped(tmp_path: Path) -> None:
    """The import ledger says what the catalog holds: without the catalog it would skip every image."""
    _touch(tmp_path, f"import-{NEW}.db")
    _, state = demo_files(tmp_path, NEW)
    assert not state.exists()
