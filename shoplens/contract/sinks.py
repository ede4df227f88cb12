"""Where a catalog import writes: the one interface both sides implement.

The importer (``shoplens.sdk.importer``) embeds catalog images and hands them to a
:class:`CatalogSink`; it never knows what is behind it. The sdk implements the sinks
that stay on its side of the wire (``ApiSink``: the service's admin API; ``JsonlSink``:
a rows file for a re-index); the cloud implements the one that writes straight into
its Milvus store (``shoplens.cloud.milvus_sink.MilvusSink``). Which one a command uses
is decided by the root CLI, the only module that sees both packages.
"""

from __future__ import annotations

from typing import Protocol

from shoplens.contract.schemas import CatalogImage


class CatalogSink(Protocol):
    """Where embedded images go; ``upsert`` returns only once the write is durable."""

    model_id: str

    def upsert(self, images: list[CatalogImage]) -> None: ...

    def finish(self) -> None:
        """Called once after the last write (e.g. to seal segments for indexing)."""
