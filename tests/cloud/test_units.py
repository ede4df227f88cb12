"""Small pure pieces: filter expressions, capability detection, rate limiter, key ring."""

from __future__ import annotations

import time

import pytest

from shoplens.contract.schemas import SearchFilters
from shoplens.settings import Settings

from shoplens.cloud.auth import KeyRing, RateLimiter, Role
from shoplens.cloud.errors import ApiError
from shoplens.cloud.store_errors import InvalidRequest
from shoplens.cloud.filters import build_filter, literal, quote
from shoplens.cloud.milvus_conn import native_grouping_supported, parse_server_version


def test_filter_expression_is_built_from_our_fields_and_quoted_values():
    f = SearchFilters(category_in=["a", 'b"c'], price_min=1.5, price_max=10, attributes={"colour": "red", "n": 3, "ok": True})
    assert build_filter(f) == (
        '(category in ["a", "b\\"c"]) and (price >= 1.5) and (price <= 10.0) and '
        '(attributes["colour"] == "red") and (attributes["n"] == 3) and (attributes["ok"] == true)'
    )
    assert build_filter(None) == "" and build_filter(SearchFilters()) == ""
    # price_max alone still excludes the "no price" sentinel (-1)
    assert build_filter(SearchFilters(price_max=5)) == "(price >= 0.0) and (price <= 5.0)"


def test_filter_refusals():
    with pytest.raises(InvalidRequest, match="greater than"):
        build_filter(SearchFilters(price_min=5, price_max=1))
    with pytest.raises(InvalidRequest, match="empty"):
        build_filter(SearchFilters(category_in=[]))
    with pytest.raises(InvalidRequest, match="not allowed"):
        build_filter(SearchFilters(attributes={'a"] or true': 1}))
    with pytest.raises(InvalidRequest, match="control"):
        quote("a\x00b")
    with pytest.raises(InvalidRequest, match="finite"):
        literal(float("nan"))


def test_quote_escapes_only_what_milvus_understands():
    assert quote('\\ " \n ü') == '"\\\\ \\" \\n ü"'


@pytest.mark.parametrize(
    ("version", "native"),
    [("milvus_lite-3.2.2", True), ("v2.3.5-lite", False), ("v2.3.5", False), ("v2.4.0", True), ("2.5.10", True),
     ("unknown", False)],
)
def test_native_grouping_by_version(version, native):
    assert native_grouping_supported(version) is native


def test_parse_server_version():
    assert parse_server_version("v2.3.5-lite") == (2, 3, 5)
    assert parse_server_version("nonsense") is None


def test_token_bucket_refills():
    rl = RateLimiter(rate=20, burst=2)
    rl.take("a")
    rl.take("a")
    with pytest.raises(ApiError) as exc:
        rl.take("a")
    assert exc.value.headers["Retry-After"] == "1"
    rl.take("b")  # another key, another bucket
    time.sleep(0.12)  # 20/s -> 2 tokens back
    rl.take("a")


def test_key_ring_roles():
    ring = KeyRing(Settings(admin_keys=["adm"], device_keys=["dev", ""]))
    assert ring.role_of("adm") is Role.ADMIN
    assert ring.role_of("dev") is Role.DEVICE
    assert ring.role_of("") is None and ring.role_of("ad") is None
    assert ring.has_admin and not KeyRing(Settings(device_keys=["dev"])).has_admin


def test_a_garbled_stored_timestamp_reads_as_empty():
    """Milvus Lite recovered rows of a write torn by kill -9 with garbage created_at values (seen in the soak)."""
    from shoplens.cloud.schema import row_to_image_info

    for garbage in (1407400654798860000, -(2**62), "x"):
        assert row_to_image_info({"image_id": "i", "product_id": "p", "created_at": garbage})["created_at"] == ""
    assert row_to_image_info({"image_id": "i", "product_id": "p", "created_at": 0})["created_at"].startswith("1970-01-01")
