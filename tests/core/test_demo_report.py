"""The demo report's thumbnails come from the demo's own dataset files, not from image_url.

The index holds no local paths any more (image_url is for public URLs), so the
demo passes render_html a product id -> iconic image lookup; hits' strings are
never read as files.
"""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import pytest

from shoplens.demo.grocery import DemoData, DemoProduct
from shoplens.demo.run import DemoSummary, QueryOutcome, write_report

Image = pytest.importorskip("PIL.Image")


def _jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def _decoded_size(src: str) -> tuple[int, int]:
    assert src.startswith("data:image/jpeg;base64,"), src[:40]
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size


@pytest.fixture
def data(tmp_path: Path) -> DemoData:
    products = [
        DemoProduct("Granny-Smith", "Apple", _jpeg(tmp_path / "granny.jpg", (60, 30), (10, 200, 10))),
        DemoProduct("Oatly-Oat-Milk", "Oat-Milk", _jpeg(tmp_path / "oatly.jpg", (20, 40), (240, 240, 240))),
    ]
    return DemoData(tmp_path, products, [], [])


def test_lookup_maps_a_product_id_to_a_data_uri_of_its_iconic_image(data: DemoData) -> None:
    from shoplens.demo.run import demo_thumbnails

    lookup = demo_thumbnails(data)
    assert _decoded_size(lookup({"product_id": "Granny-Smith", "image_url": ""})) == (60, 30)
    assert _decoded_size(lookup({"product_id": "Oatly-Oat-Milk", "image_url": "/etc/passwd"})) == (20, 40)
    assert lookup({"product_id": "not-in-the-catalog", "image_url": str(data.products[0].iconic)}) == ""


class _ImgSrcs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs).get("src") or "")


def test_report_shows_iconic_thumbnails_for_hits_without_image_url(tmp_path: Path, data: DemoData) -> None:
    from shoplens.demo.run import demo_thumbnails

    photo = _jpeg(tmp_path / "query.jpg", (50, 50), (20, 180, 30))
    hits = [{"product_id": "Granny-Smith", "title": "Granny-Smith", "score": 0.9, "image_url": ""},
            {"product_id": "Oatly-Oat-Milk", "title": "Oatly-Oat-Milk", "score": 0.4, "image_url": ""}]
    whole = {"label": "whole photo", "score": 0.0, "box": (0.0, 0.0, 50.0, 50.0), "source": "whole_image", "hits": hits}
    outcome = QueryOutcome(photo, "Granny-Smith", hits, [whole], {}, 1024, photo.stat().st_size)
    summary = DemoSummary(queries=1, recall_at_1=1.0, recall_at_5=1.0, catalog_images=2, products=2, index_seconds=0.1, query_seconds=0.1, model_id="m-8d-0123456789ab")
    out = tmp_path / "demo_report.html"
    write_report(out, summary, [outcome], demo_thumbnails(data))
    parser = _ImgSrcs()
    parser.feed(out.read_text())
    query_photo, *thumbs = parser.srcs
    assert _decoded_size(query_photo) == (50, 50)
    assert [_decoded_size(s) for s in thumbs] == [(60, 30), (20, 40)]
