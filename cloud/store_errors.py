"""What the catalog store reports, in domain terms; the HTTP edge (``errors.py``) turns it into a response.

The store, the schema mapping and the filter builder raise these and never an
HTTP error, so they can be used from the CLI (``shoplens reindex``), a sink or a
benchmark with no web framework in sight. Each carries the contract's
:class:`ErrorCode` (which fixes the status on the wire) and, where a retry helps,
how long to wait.
"""

from __future__ import annotations

from typing import Any

from shoplens.contract.errors import ErrorCode, ShoplensError

#: seconds a client should wait before retrying when Milvus is unreachable
BACKEND_RETRY_AFTER_S = 5
#: seconds a client should wait before retrying while the collection is loading
LOADING_RETRY_AFTER_S = 2


class StoreError(ShoplensError):
    """A store failure with a contract code, optional details and an optional retry delay."""

    retry_after_s: int | None = None

    def __init__(self, message: str, *, details: Any | None = None) -> None:
        super().__init__(message)
        self.details = details


class NotFound(StoreError):
    """No such collection, product or image (for this alias)."""

    code = ErrorCode.NOT_FOUND


class InvalidRequest(StoreError):
    """A request the catalog cannot carry out as asked (bad model id, bad filter, a drop of what is served)."""

    code = ErrorCode.VALIDATION_ERROR


class CatalogInconsistent(StoreError):
    """The Milvus side is not what shoplens made (e.g. an alias on a collection without a model id)."""

    code = ErrorCode.INTERNAL


class BackendUnavailable(StoreError):
    """Milvus cannot be reached, or did not apply a write: retry later."""

    code = ErrorCode.BACKEND_UNAVAILABLE
    retry_after_s = BACKEND_RETRY_AFTER_S

    def __init__(self, message: str = "the vector database is unreachable; retry later") -> None:
        super().__init__(message)


class CollectionNotReady(BackendUnavailable):
    """The collection is still being loaded (first requests after a start)."""

    retry_after_s = LOADING_RETRY_AFTER_S

    def __init__(self, collection: str) -> None:
        super().__init__(f"the catalog collection {collection!r} is still loading; retry shortly")


class ModelUnknown(StoreError):
    """A vector of a model id the service does not serve (vectors of two models never mix)."""

    code = ErrorCode.MODEL_MISMATCH

    def __init__(self, model_id: str, current: str | None, served: list[str]) -> None:
        super().__init__(
            f"vector model id {model_id!r} is not served here (served: {', '.join(served) or 'none'}; current: "
            f"{current!r}); update the app's embedder bundle (vectors of different models are not comparable)",
            details={"request_model_id": model_id, "catalog_model_id": current, "served_model_ids": served},
        )


class ModelRetired(StoreError):
    """A vector of a model id that was served and is retired: the app must update its bundle."""

    code = ErrorCode.MODEL_RETIRED

    def __init__(self, model_id: str, current: str | None, bundle_url: str) -> None:
        where = f" from {bundle_url}" if bundle_url else ""
        super().__init__(
            f"model {model_id!r} is retired; update the app to the current model {current!r}{where}",
            details={"request_model_id": model_id, "current_model_id": current, "current_bundle_url": bundle_url},
        )
