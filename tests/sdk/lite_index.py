"""Read back what an import wrote into a Milvus Lite file (the served collection), for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def lite_rows(db: Path, collection: str | None = None) -> dict[str, tuple[str, np.ndarray]]:
    """image id -> (product id, vector) of every row of the served collection in a Lite file
    (``collection``: the alias, default the settings'); a duplicated image id fails here."""
    from shoplens.cloud import schema as cs
    from shoplens.cloud.store import CatalogStore
    from shoplens.settings import Settings

    store = CatalogStore(Settings(milvus_uri=str(db), **({"collection": collection} if collection else {})))
    try:
        binding = store.binding(refresh=True)
        assert binding is not None, f"nothing served in {db}"
        rows = store._on_collection("query", binding.collection, lambda c: c.query(
            binding.collection, filter="", output_fields=[cs.PK, "product_id", cs.VECTOR], limit=16384, consistency_level="Strong"))
        count = store.count(binding)
    finally:
        store.close()
    ids = [r[cs.PK] for r in rows]
    assert len(ids) == len(set(ids)) == count, f"{count} rows, {len(set(ids))} distinct image ids: duplicated rows"
    return {r[cs.PK]: (r["product_id"], np.asarray(r[cs.VECTOR], dtype=np.float32)) for r in rows}
