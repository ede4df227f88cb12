"""API bodies: limits and strictness the client and the service share."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from shoplens.contract import MAX_BATCH_VECTORS, MAX_TOP_K, BatchSearchRequest, SearchRequest, encode_vector

MID = "resnet-256d-0123456789ab"


def test_search_request_defaults_and_limits() -> None:
    v = encode_vector(np.ones(256), "i8")
    r = SearchRequest(model_id=MID, vector=v)
    assert r.encoding.value == "i8" and r.top_k == 10
    with pytest.raises(ValidationError):
        SearchRequest(model_id=MID, vector=v, top_k=MAX_TOP_K + 1)
    with pytest.raises(ValidationError):
        SearchRequest(model_id="not a model id", vector=v)
    with pytest.raises(ValidationError, match="extra"):
        SearchRequest(model_id=MID, vector=v, filters={"colour": "red"})
    with pytest.raises(ValidationError):
        BatchSearchRequest(model_id=MID, vectors=[v] * (MAX_BATCH_VECTORS + 1))
