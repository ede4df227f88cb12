"""A shop's catalog (the CSV / JSONL / folder that ``shoplens index`` reads) as the trainer's ``Catalog``.

Rows are read by the index's own reader (``shoplens.sdk.catalog.read_catalog``),
so there is one definition of the catalog format. What the trainer adds is the
meaning of ``role`` (``catalog``: a product image and a training sample of its
product; ``photo``: a labelled shopper photo, trained on; ``val``: a labelled
photo for evaluation and epoch selection only) and the rules a training catalog
must meet: local files, every image listed once, every labelled photo's product
having a catalog row, at least two products. Every broken rule is reported in
one ``CatalogDataError`` naming the file and line, before anything is computed.

String product ids become ints in sorted order (so a reordered file is the
same catalog); ``Catalog.names`` maps them back.
"""

from __future__ import annotations

import os
from pathlib import Path

from shoplens.converters.embedder.data import Catalog, CatalogDataError, Sample, raise_problems
from shoplens.sdk.catalog import CatalogEntry, CatalogError, read_catalog

#: the trainer's split of each labelled-photo role (the Grocery layout's split names)
SPLIT_OF_ROLE = {"photo": "train", "val": "val"}


def catalog_format(source: Path) -> str:
    """csv, jsonl or folder: recorded in the checkpoint with the catalog's path."""
    return "folder" if source.is_dir() else source.suffix.lower().lstrip(".")


def _where(source: Path, entry: CatalogEntry) -> str:
    """How an error names a row: file and line, or the image itself in a folder catalog (no lines there)."""
    return entry.image if source.is_dir() else f"{source} line {entry.line}"


def _read_rows(source: Path) -> list[CatalogEntry]:
    """Every row, by the index's reader; its errors (bad row, bad JSON, no such file) carry the file's name."""
    try:
        return list(read_catalog(source))
    except CatalogError as exc:
        msg = str(exc)
        raise CatalogDataError(msg if str(source) in msg else f"{source}: {msg}") from None


def _row_problems(source: Path, entries: list[CatalogEntry]) -> list[str]:
    """Rows the trainer cannot use: remote images, an image listed twice, a labelled photo of an unknown product."""
    problems: list[str] = []
    first: dict[str, CatalogEntry] = {}
    products = {e.product_id for e in entries if e.indexed}
    for e in entries:
        where = _where(source, e)
        if e.is_remote:
            problems.append(f"{where}: image {e.image} is a URL; the trainer reads local files (download the images first)")
        key = os.path.normpath(e.image)
        if key in first:
            problems.append(f"{where}: duplicate row: image {e.image} is already listed on line {first[key].line}")
        else:
            first[key] = e
        if not e.indexed and e.product_id not in products:
            problems.append(f"{where}: unknown product {e.product_id!r}: a role={e.role} row needs a catalog row (role catalog) of its product")
    if not entries:
        problems.append(f"{source}: the catalog has no rows")
    elif len(products) < 2:
        problems.append(f"{source}: {len(products)} product(s) with a catalog image (role catalog); training needs at least 2")
    return problems


def load_shop_catalog(source: str | os.PathLike[str]) -> Catalog:
    """The trainer's ``Catalog`` of a shop catalog; ``CatalogDataError`` listing every bad row otherwise.

    Image files are checked later, with the rest of what a run reads (``catalog_check``).
    """
    source = Path(source)
    entries = _read_rows(source)
    raise_problems(_row_problems(source, entries))
    ids = {pid: i for i, pid in enumerate(sorted({e.product_id for e in entries if e.indexed}))}
    images: dict[int, list[Sample]] = {i: [] for i in ids.values()}
    photos: dict[str, list[Sample]] = {split: [] for split in SPLIT_OF_ROLE.values()}
    categories: dict[int, str] = {}
    for e in entries:
        pid = ids[e.product_id]
        if e.indexed:
            images[pid].append(Sample(Path(e.image), pid, "iconic", _where(source, e)))
            if e.category and pid not in categories:
                categories[pid] = e.category
        else:
            photos[SPLIT_OF_ROLE[e.role]].append(Sample(Path(e.image), pid, "photo", _where(source, e)))
    root = source if source.is_dir() else source.parent
    return Catalog(root, {i: pid for pid, i in ids.items()}, images, categories, photos, source=source, format=catalog_format(source))
