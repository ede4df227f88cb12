"""CatalogImage.image_url: empty or an absolute https:// (http://) URL with a host, nothing else.

The value is sent to every phone that gets the product and put into HTML, so a
local path, another scheme or a URL with credentials must fail validation, with
a message that names the field and says what is accepted.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shoplens.contract import CatalogImage

ACCEPTED = [
    "",
    "https://cdn.example/img/1.jpg",
    "https://cdn.example:8443/a/b.jpg?w=320&h=320#top",
    "HTTPS://CDN.Example/x.JPG",
    "https://[2001:db8::1]/x.jpg",
    "https://127.0.0.1/x.jpg",
    "https://bücher.example/äpfel.jpg",
    "http://cdn.example/x.jpg",  # structurally valid; a service decides (allow_http_image_urls)
]

REJECTED = {
    "file": "file:///etc/passwd",
    "file-host": "file://server/share/x.jpg",
    "javascript": "javascript:alert(1)",
    "data": "data:image/png;base64,iVBORw0KGgo=",
    "ftp": "ftp://cdn.example/x.jpg",
    "abs-path": "/home/shop/catalog/images/1.jpg",
    "relative": "images/1.jpg",
    "dot-relative": "./1.jpg",
    "windows-drive": "C:\\catalog\\1.jpg",
    "windows-drive-slash": "C:/catalog/1.jpg",
    "unc": "\\\\host\\share\\1.jpg",
    "scheme-relative": "//cdn.example/x.jpg",
    "no-host": "https:///x.jpg",
    "port-only": "https://:443/x.jpg",
    "no-slashes": "https:cdn.example/x.jpg",
    "space": "https://cdn.example/a b.jpg",
    "leading-space": " https://cdn.example/a.jpg",
    "newline": "https://cdn.example/a.jpg\nX-Injected: 1",
    "control": "https://cdn.example/a\x00.jpg",
    "backslash": "https://cdn.example\\@evil.example/a.jpg",
    "userinfo": "https://user:pass@cdn.example/a.jpg",
    "user-only": "https://user@cdn.example/a.jpg",
    "attribute-breakout": "https://cdn.example/a.jpg'><script>alert(1)</script>",
    "quote": 'https://cdn.example/a.jpg" onerror="x',
    "bad-port": "https://cdn.example:99999/a.jpg",
    "bad-host": "https://cdn%2eexample/a.jpg",
}


def _image(url: str) -> CatalogImage:
    return CatalogImage(image_id="i1", product_id="p1", vector="AAAAAA==", image_url=url)


@pytest.mark.parametrize("url", ACCEPTED)
def test_accepted_image_urls(url: str) -> None:
    from shoplens.contract.urls import safe_image_url

    assert _image(url).image_url == url
    assert safe_image_url(url) == url


@pytest.mark.parametrize("url", REJECTED.values(), ids=REJECTED.keys())
def test_rejected_image_urls_name_the_field_and_the_rule(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        _image(url)
    (err,) = info.value.errors()
    assert err["loc"] == ("image_url",)
    assert "image_url" in err["msg"] and "https://" in err["msg"], err["msg"]


@pytest.mark.parametrize("url", REJECTED.values(), ids=REJECTED.keys())
def test_output_side_drops_what_the_contract_rejects(url: str) -> None:
    from shoplens.contract.urls import is_acceptable_image_url, safe_image_url

    assert not is_acceptable_image_url(url)
    assert safe_image_url(url) == ""


def test_http_is_refused_where_the_caller_is_strict() -> None:
    from shoplens.contract.urls import ImageUrlError, check_image_url

    with pytest.raises(ImageUrlError, match=r"images\[2\]\.image_url is an http:// URL"):
        check_image_url("http://cdn.example/x.jpg", allow_http=False, field="images[2].image_url")
    assert check_image_url("https://cdn.example/x.jpg", allow_http=False)


def test_safe_image_url_drops_non_strings() -> None:
    from shoplens.contract.urls import safe_image_url

    assert safe_image_url(None) == "" and safe_image_url(42) == ""


@pytest.mark.parametrize("stored", ["/home/shop/img.jpg", "file:///etc/passwd", "javascript:alert(1)", "\\\\host\\share\\x.jpg"])
def test_a_hit_never_carries_an_unsafe_url(stored: str) -> None:
    """The SDK parses hits with ProductHit: an old service's stored path is dropped on the phone too."""
    from shoplens.contract.schemas import ProductHit

    assert ProductHit(product_id="p", score=0.9, image_id="i", image_url=stored).image_url == ""
    assert ProductHit(product_id="p", score=0.9, image_id="i", image_url="https://cdn.example/x.jpg").image_url == "https://cdn.example/x.jpg"
