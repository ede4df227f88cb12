"""What a collection holds: the vector space of one model id, behind an alias."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Binding:
    """The collection an alias points at, and the vector space it holds."""

    alias: str
    collection: str
    model_id: str
    dim: int
    metric: str
    storage: str = "f32"  # how the collection stores vectors (schema.STORAGE_TYPES)
