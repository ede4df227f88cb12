"""Reading a shop's catalog: CSV, JSONL, or a folder of product folders.

Columns (CSV header / JSONL keys): ``product_id`` and ``image`` (a path,
relative to the catalog file, or an http(s) URL) are required; ``title``,
``category``, ``price``, ``currency``, ``image_url`` are optional; any other
column becomes a free attribute. A folder catalog is ``DIR/<product_id>/*.jpg``.

``role`` (optional) says what a row's image is for: ``catalog`` (the default) is
a product image, indexed by ``shoplens index`` and a training sample of its
product; ``photo`` is a labelled shopper photo and ``val`` one kept for
evaluation, both read only by ``shoplens embedder train`` and never indexed
(``importer`` skips them). One file then serves the index and the trainer.

``image_url`` is what phones are sent to show the product, so it must pass the
contract's rule (``shoplens.contract.urls``: empty or an https:// URL); a row
that breaks it is refused here, before any image is embedded, rather than
half-way through an import when the service answers 422.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from shoplens.contract.errors import ErrorCode, ShoplensError
from shoplens.contract.urls import ImageUrlError, check_image_url

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_KNOWN = {"product_id", "image", "image_path", "title", "category", "price", "currency", "image_url", "attributes", "role"}

#: what a row's image is for (the ``role`` column); only ``catalog`` rows are indexed
CATALOG_ROLE = "catalog"
ROLES = (CATALOG_ROLE, "photo", "val")


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
    role: str = CATALOG_ROLE  # one of ROLES: a product image, or a labelled shopper photo (training only)

    @property
    def is_remote(self) -> bool:
        return self.image.startswith(("http://", "https://"))

    @property
    def indexed(self) -> bool:
        """Whether ``shoplens index`` writes this row (labelled photos are for training only)."""
        return self.role == CATALOG_ROLE


def _role(row: dict[str, Any], line: int) -> str:
    """The row's role (default ``catalog``); an unknown one is a CatalogError naming the line."""
    role = str(row.get("role") or CATALOG_ROLE).strip().lower()
    if role not in ROLES:
        raise CatalogError(f"line {line}: role {role!r} is not one of {', '.join(ROLES)}")
    return role


def _image_url(row: dict[str, Any], line: int, allow_http: bool) -> str:
    """The row's image_url if the contract accepts it; a CatalogError naming the line otherwise."""
    value = str(row.get("image_url") or "").strip()
    try:
        return check_image_url(value, allow_http=allow_http)
    except ImageUrlError as exc:
        raise CatalogError(f"line {line}: {exc} (got {value[:80]!r})") from None


def _entry(row: dict[str, Any], base: Path, line: int, allow_http: bool = False) -> CatalogEntry:
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
    image_url = _image_url(row, line, allow_http)
    attrs = dict(row.get("attributes") or {}) if isinstance(row.get("attributes"), dict) else {}
    attrs.update({k: v for k, v in row.items() if k not in _KNOWN and v not in (None, "")})
    return CatalogEntry(
        product_id=pid,
        image=image,
        title=str(row.get("title") or ""),
        category=str(row.get("category") or ""),
        price=price,
        currency=str(row.get("currency") or ""),
        image_url=image_url,
        attributes=attrs,
        line=line,
        role=_role(row, line),
    )


def read_catalog(source: str | os.PathLike[str], *, allow_http_image_urls: bool | None = None) -> Iterator[CatalogEntry]:
    """Yield catalog entries; a malformed row raises CatalogError naming its line.

    ``allow_http_image_urls``: whether an ``http://`` image_url passes (default: the
    ``SHOPLENS_ALLOW_HTTP_IMAGE_URLS`` setting, which is also what a service refuses by).
    """
    from shoplens.settings import get_settings

    allow_http = get_settings().allow_http_image_urls if allow_http_image_urls is None else allow_http_image_urls
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
                yield _entry(row, base, i, allow_http)
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
                yield _entry(row, base, i, allow_http)
    else:
        raise CatalogError(f"{p}: unsupported catalog format (use .csv, .jsonl or a folder)")
