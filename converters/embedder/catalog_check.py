"""The check a training run passes before any work: every image it will read decodes, and what it read is recorded.

Why before: a missing or corrupt file met half-way through the frozen-feature
cache would stop a run after minutes of work and leave partial files behind. So
every image the run reads is read and decoded here first, by the SDK's decoder
(the one the trainer and the phone use; JPEGs at a reduced draft scale, which is
cheap), and every failure is reported at once, naming its catalog row.

The same pass hashes each image's bytes: ``CheckedData.sha256`` is what the
checkpoint records as the data it was trained on, and a state file written
from other data is not resumed.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from tqdm import tqdm

from shoplens.converters.embedder.data import Catalog, Sample, raise_problems
from shoplens.sdk.images import ImageError, content_hash, decode_rgb, read_bytes


@dataclass(frozen=True)
class CheckedData:
    """What one run reads (the checkpoint's ``meta["catalog"]``)."""

    path: str
    format: str  # grocery, csv, jsonl or folder
    products: int
    catalog_images: int
    photos: int  # training photos (after --max-photos)
    val_photos: int  # photos the per-epoch evaluation queries with (0 with --no-eval)
    sha256: str  # of every image read, with its product and role (order-free)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_run_data(catalog: Catalog, photos: Sequence[Sample], val: Sequence[Sample] = (), other: Sequence[Sample] = (), *,
                   decode_side: int = 224) -> CheckedData:
    """Read and decode every image of ``catalog``'s catalog images, the training ``photos``, the ``val`` photos and
    ``other`` images the run reads (the evaluation's train-split photos); raise listing every bad row.

    ``decode_side``: JPEGs are decoded at the smallest draft scale that keeps this
    many pixels per side (the run's input size), which still finds truncated files.
    """
    groups = (("catalog", catalog.iconic_samples()), ("photo", photos), ("val", val), ("eval", other))
    problems: list[str] = []
    lines: set[str] = set()
    digests: dict[str, str] = {}  # path -> content hash ("" if bad): an image in two groups is read once
    todo = [(role, s) for role, samples in groups for s in samples]
    for role, s in tqdm(todo, desc="checking catalog images", unit="image", leave=False):
        key = str(s.path)
        if key not in digests:
            try:
                data = read_bytes(s.path)
                decode_rgb(data, target_side=decode_side)
            except ImageError as exc:
                problems.append(f"{s.origin or s.path}: {exc.message}" + ("" if key in exc.message else f" ({key})"))
                digests[key] = ""
                continue
            digests[key] = content_hash(data)
        if digests[key]:
            lines.add(f"{role}\t{catalog.names[s.product]}\t{digests[key]}")
    raise_problems(problems, "unreadable catalog images")
    h = hashlib.sha256("".join(f"{line}\n" for line in sorted(lines)).encode())
    return CheckedData(
        path=str(catalog.source or catalog.root),
        format=catalog.format,
        products=len(catalog.names),
        catalog_images=sum(len(v) for v in catalog.images.values()),
        photos=len(photos),
        val_photos=len(val),
        sha256=h.hexdigest(),
    )
