"""The embedder model id: the key that keeps device vectors and catalog vectors comparable.

Vectors from two different embedders live in unrelated spaces: comparing them
returns confident nonsense. So every uploaded vector carries a model id and
every catalog collection is bound to one.

The id is derived from what determines the vector space: the sha256 of the
*source* weights (the fp32 checkpoint the artifacts were converted from), the
preprocessing (input size, resize rule, colour order, normalisation), the
embedding dimension, the output normalisation and the metric. All artifacts
converted from one checkpoint (TFLite int8 on Android, CoreML on iOS, the
catalog importer) share the id: the converters' parity gate is what licenses
that (cosine >= 0.99 to the source), and it is why a CoreML phone and a TFLite
phone can search the same collection.
"""

from __future__ import annotations

import hashlib
import os
import json
import re
from typing import Any

MAX_DIM = 32768  # the largest vector dimension Milvus accepts
#: the dimension part spells 1..32768 exactly, so the published JSON Schema refuses what Milvus would
_DIM = r"(?:[1-9][0-9]{0,3}|[12][0-9]{4}|3[01][0-9]{3}|32[0-6][0-9]{2}|327[0-5][0-9]|3276[0-8])"
MODEL_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,47}-" + _DIM + r"d-[0-9a-f]{12}$"
_MODEL_ID_RE = re.compile(MODEL_ID_PATTERN)


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return (s or "embedder")[:48].rstrip("-._") or "embedder"


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) so equal inputs hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def compute_model_id(
    *,
    name: str,
    weights_sha256: str,
    preprocessing: dict[str, Any],
    dim: int,
    normalization: str = "l2",
    metric: str = "cosine",
) -> str:
    """``<name>-<dim>d-<12 hex>``: readable in logs, unique by construction."""
    if not re.fullmatch(r"[0-9a-f]{64}", weights_sha256):
        raise ValueError(f"weights_sha256 must be 64 lowercase hex characters, got {weights_sha256!r}")
    if not 0 < dim <= MAX_DIM:
        raise ValueError(f"dim must be 1..{MAX_DIM}, got {dim}")
    payload = canonical_json(
        {
            "weights_sha256": weights_sha256,
            "preprocessing": preprocessing,
            "dim": int(dim),
            "normalization": normalization,
            "metric": metric,
        }
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{_slug(name)}-{int(dim)}d-{digest}"


def is_valid_model_id(value: str) -> bool:
    return bool(_MODEL_ID_RE.fullmatch(value)) and model_id_dim(value) <= MAX_DIM


def model_id_dim(model_id: str) -> int:
    """The dimension a model id declares (so a server can check before lookup)."""
    m = re.search(r"-([0-9]+)d-[0-9a-f]{12}$", model_id)
    if not m:
        raise ValueError(f"not a shoplens model id: {model_id!r}")
    return int(m.group(1))


def sha256_file(path: "str | os.PathLike[str]", chunk: int = 1 << 20) -> str:
    """Streaming sha256 of a file (weights can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
