"""Small shop catalogs (CSV and JSONL, ``shoplens index``'s formats with ``role`` rows) built from real Grocery Store images.

Shared by the trainer's catalog tests; the images are linked, never copied.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from shoplens.converters.embedder.data import load_grocery

#: Grocery product ids spread over the classes (fruit, vegetables, packages), so a few steps can tell them apart
PRODUCTS = (0, 13, 27, 40, 57, 67)
EXTRA_CATALOG_IMAGE = (0, 27)  # these products get a second catalog image (a shop often has several)
PHOTOS, VAL = 3, 2
FIELDS = ("product_id", "image", "title", "category", "role")


def catalog_rows(grocery_dir: Path, images: str = "images") -> list[dict[str, str]]:
    """Rows of a 6-product catalog: each product's iconic image (role catalog; a train photo as a second one for
    two products), 3 train photos (role photo) and 2 val photos (role val); paths under ``images/`` (the dataset link)."""
    grocery = load_grocery(grocery_dir)
    train, val = grocery.split("train"), grocery.split("val")

    def rel(p: Path) -> str:
        return f"{images}/{p.relative_to(grocery_dir)}"

    rows: list[dict[str, str]] = []
    for pid in PRODUCTS:
        name, category = grocery.names[pid], grocery.categories[pid]
        own = [s.path for s in train if s.product == pid]
        row = {"product_id": name, "title": name.replace("-", " "), "category": category}
        rows.append({**row, "image": rel(grocery.images[pid][0].path), "role": "catalog"})
        if pid in EXTRA_CATALOG_IMAGE:
            rows.append({**row, "image": rel(own[-1]), "role": ""})  # an empty role is a catalog image
        rows += [{**row, "image": rel(p), "role": "photo"} for p in own[:PHOTOS]]
        rows += [{**row, "image": rel(s.path), "role": "val"} for s in val if s.product == pid][:VAL]
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if v}) + "\n" for r in rows))
    return path


def shop_folder(grocery_dir: Path, root: Path) -> Path:
    """``root`` with ``images`` linked to the Grocery dataset: the folder a catalog file sits in."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").symlink_to(grocery_dir.resolve())
    return root
