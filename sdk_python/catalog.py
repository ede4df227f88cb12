"""Reading a shop's catalog: CSV, JSONL, or a folder of product folders.

Columns (CSV header / JSONL keys): ``product_id`` and ``image`` (a path,
relative to the catalog file, or an http(s) URL) are required; ``title``,
``category``, ``price``, ``currency``, ``image_url`` are optional; any other
column becomes a free attribute. A folder catalog is ``DIR/<product_id>/*.jpg``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from shoplens.contract.errors import ErrorCode, ShoplensError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_KNOWN = {"product_id", "image", "image_path", "title", "category", "price", "currency", "image_url", "attributes"}


class CatalogError(ShoplensError, ValueError):
    code = ErrorCode.VALIDATION_ERROR


@dataclass
class CatalogEntry:
    product_id: str
    image: str  # local path or http(s) URL
    title: str = ""
    category: str = ""
    price: float | None = None
    currency: str = ""
    image_url: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    line: int = 0  # where it came from, for error reports

    @property
    def is_remote(self) -> bool:
        return self.image.startswith(("http://", "https://"))


def _entry(row: dict[str, Any], base: Path, line: int) -> CatalogEntry:
    pid = str(row.get("product_id") or "").strip()
    image = str(row.get("image") or row.get("image_path") or "").strip()
    if not pid or not image:
        raise CatalogError(f"line {line}: product_id and image are required")
    if not image.startswith(("http://", "https://")) and not os.path.isabs(image):
        image = str(base / image)
    price_raw = row.get("price")
    try:
        price = float(price_raw) if price_raw not in (None, "") else None
    except (TypeError, ValueError):
        raise CatalogError(f"line {line}: price {price_raw!r} is not a number") from None
    attrs = dict(row.get("attributes") or {}) if isinstance(row.get("attributes"), dict) else {}
    attrs.update({k: v for k, v in row.items() if k not in _KNOWN and v not in (None, "")})
    return CatalogEntry(
        product_id=pid,
        image=image,
        title=str(row.get("title") or ""),
        category=str(row.get("category") or ""),
        price=price,
        currency=str(row.get("currency") or ""),
        image_url=str(row.get("image_url") or ""),
        attributes=attrs,
        line=line,
    )


def read_catalog(source: str | os.PathLike[str]) -> Iterator[CatalogEntry]:
    """Yield catalog entries; a malformed row raises CatalogError naming its line."""
    p = Path(source)
    if p.is_dir():
        for product_dir in sorted(d for d in p.iterdir() if d.is_dir()):
            for i, img in enumerate(sorted(f for f in product_dir.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)):
                yield CatalogEntry(product_id=product_dir.name, image=str(img), title=product_dir.name, line=i + 1)
        return
    if not p.is_file():
        raise CatalogError(f"catalog not found: {p}")
    base = p.parent
    if p.suffix.lower() == ".csv":
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "product_id" not in reader.fieldnames:
                raise CatalogError(f"{p}: the CSV header must include product_id and image (has {reader.fieldnames})")
            for i, row in enumerate(reader, start=2):
                yield _entry(row, base, i)
    elif p.suffix.lower() in (".jsonl", ".ndjson"):
        with p.open(encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CatalogError(f"{p}:{i}: not JSON: {exc.msg}") from None
                if not isinstance(row, dict):
                    raise CatalogError(f"{p}:{i}: each line must be a JSON object")
                yield _entry(row, base, i)
    else:
        raise CatalogError(f"{p}: unsupported catalog format (use .csv, .jsonl or a folder)")
