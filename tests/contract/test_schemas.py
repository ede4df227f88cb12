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


def test_ids_without_control_characters_and_model_dims_in_range() -> None:
    from shoplens.contract import CatalogImage
    from shoplens.contract.model_id import is_valid_model_id

    ok = CatalogImage(image_id="img 1/ä", product_id="p-1", vector="AAAAAA==")
    assert ok.image_id == "img 1/ä"
    for bad in ("a\x05b", "", "x" * 129, "tab\there"):
        with pytest.raises(ValidationError):
            CatalogImage(image_id=bad, product_id="p", vector="AAAAAA==")
    assert not is_valid_model_id("m-0d-0123456789ab") and not is_valid_model_id("m-32769d-0123456789ab")
    assert is_valid_model_id("m-32768d-0123456789ab")
    with pytest.raises(ValidationError):
        SearchRequest(model_id="m-90000d-0123456789ab", vector="AAAA")
    with pytest.raises(ValidationError):
        SearchRequest(model_id="m-0d-0123456789ab", vector="AAAA")
