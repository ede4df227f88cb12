"""The HTML report escapes every catalog value and never turns a hit's string into a file read."""

from __future__ import annotations

import base64
import io
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from shoplens.sdk.report import ReportCard, render_html, thumbnail_src

SCRIPT = "'><script>alert(1)</script>"
ONERROR = '" onerror="x'


class _Tags(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _parse(page: str) -> list[tuple[str, dict[str, str | None]]]:
    p = _Tags()
    p.feed(page)
    p.close()
    return p.tags


def _photo() -> object:
    from PIL import Image

    return Image.fromarray(np.full((32, 32, 3), 128, np.uint8))


def _page(hits: list[dict], **kw: object) -> str:
    card = ReportCard(f"photo {SCRIPT}{ONERROR}", _photo(), [{"label": ONERROR + SCRIPT, "score": 0.9, "hits": hits, "expected": None}])
    return render_html([card], f"title {SCRIPT}", **kw)  # type: ignore[arg-type]


def _assert_inert(page: str) -> list[tuple[str, dict[str, str | None]]]:
    tags = _parse(page)
    assert "script" not in [t for t, _ in tags], "a catalog value opened a <script> element"
    attrs = {name for _, a in tags for name in a}
    assert "onerror" not in attrs and not any(name.startswith("on") for name in attrs), attrs
    return tags


@pytest.mark.parametrize("payload", [SCRIPT, ONERROR])
def test_hit_values_are_escaped(payload: str) -> None:
    hits = [
        {"product_id": f"p{payload}", "title": f"t{payload}", "image_url": f"https://cdn.example/a.jpg{payload}", "score": 0.9},
        {"product_id": f"p{payload}", "title": "", "image_url": f"/x{payload}", "score": 0.8},  # name from product_id
    ]
    page = _page(hits)
    tags = _assert_inert(page)
    assert page.count(f"t{payload}") == 0 and "t" + payload.replace("'", "&#x27;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;") in page
    srcs = [a["src"] for t, a in tags if t == "img"]
    assert len(srcs) == 1 and srcs[0].startswith("data:image/jpeg;base64,"), srcs  # only the query photo


def test_a_valid_remote_url_is_the_thumbnail_quoted() -> None:
    page = _page([{"product_id": "p", "title": "t", "image_url": "https://cdn.example/a.jpg?w=1&h=2", "score": 0.5}])
    srcs = [a["src"] for t, a in _assert_inert(page) if t == "img"]
    assert srcs[1] == "https://cdn.example/a.jpg?w=1&h=2" and "src='https://cdn.example/a.jpg?w=1&amp;h=2'" in page


_OPENED: list[str] | None = None


def _record_opens(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None:
        _OPENED.append(str(args[0]))


sys.addaudithook(_record_opens)  # a real audit of file opens, not a mock; inert unless _OPENED is set


@pytest.mark.parametrize("value", ["/etc/passwd", "file:///etc/passwd"])
def test_thumbnail_src_of_a_local_path_is_empty_and_opens_nothing(value: str) -> None:
    global _OPENED
    _OPENED = []
    try:
        src = thumbnail_src(value)
        opened = list(_OPENED)
    finally:
        _OPENED = None
    assert src == ""
    assert not [p for p in opened if "passwd" in p], f"thumbnail_src opened {opened}"


def test_thumbnail_src_passes_nothing_but_a_remote_url() -> None:
    for value in ("javascript:alert(1)", "data:text/html,<script>alert(1)</script>", "data:image/png;base64,AAAA", "C:\\x.jpg", "\\\\host\\share\\x.jpg", ""):
        assert thumbnail_src(value) == "", value


def test_thumbnail_src_does_not_read_an_existing_local_image(tmp_path: Path) -> None:
    from PIL import Image

    img = tmp_path / "x.jpg"
    Image.new("RGB", (8, 8)).save(img)
    assert thumbnail_src(str(img)) == "" and thumbnail_src(img.as_uri()) == ""
    assert thumbnail_src("https://cdn.example/x.jpg") == "https://cdn.example/x.jpg"


def test_local_thumbnails_come_from_the_callers_paths_only(tmp_path: Path) -> None:
    from PIL import Image

    from shoplens.sdk.report import LocalThumbnails

    img = tmp_path / "p1.jpg"
    Image.new("RGB", (64, 40), (200, 10, 10)).save(img)
    lookup = LocalThumbnails({"p1": img})
    hits = [{"product_id": "p1", "title": "one", "image_url": "", "score": 0.9}, {"product_id": "p2", "image_url": str(img), "score": 0.5}]
    srcs = [a["src"] for t, a in _assert_inert(_page(hits, thumbnail=lookup)) if t == "img"]
    assert len(srcs) == 2, "p2 has no registered path; its image_url (a local path) must not be read"
    raw = base64.b64decode(srcs[1].removeprefix("data:image/jpeg;base64,"))
    assert Image.open(io.BytesIO(raw)).size == (64, 40)


def test_a_lookup_returning_anything_else_shows_no_thumbnail() -> None:
    for src in ("file:///etc/passwd", "data:text/html;base64,PHNjcmlwdD4=", "x' onerror='y"):
        page = _page([{"product_id": "p", "score": 0.1}], thumbnail=lambda hit, s=src: s)
        assert len([a for t, a in _assert_inert(page) if t == "img"]) == 1
