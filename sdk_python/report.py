"""Render search results for people: an annotated photo and a self-contained HTML page.

Everything in a hit comes from the catalog, i.e. from whoever wrote it, so every
value is HTML-escaped (attributes included) and a thumbnail ``src`` is either a
remote URL that passes the contract's image_url rule or a ``data:`` URI made
here. A hit's string is never read as a local file: pages that show local
catalog images (the demo) pass their own product -> path lookup instead.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoplens.contract.urls import safe_image_url

_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


#: what an object without a detector label is, by its source (DetectedObject.source)
_SOURCE_LABELS = {"whole_image": "whole photo", "caller_box": "tapped box"}


def object_label(label: str, source: str) -> str:
    """A searched object's name for people: its class name, else where it came from."""
    return label or _SOURCE_LABELS.get(source, source)


def box_colour(index: int) -> tuple[int, int, int]:
    """The colour of object ``index`` (0-based): its box in the photo and its heading in the page."""
    return _COLOURS[index % len(_COLOURS)]


def annotate(rgb: np.ndarray, boxes: list[tuple[float, float, float, float]], labels: list[str]) -> Any:
    """The photo with numbered boxes (a PIL image), numbered and coloured as the page lists them."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    width = max(2, round(min(im.size) / 200))
    for i, (box, label) in enumerate(zip(boxes, labels)):
        colour = box_colour(i)
        draw.rectangle(box, outline=colour, width=width)
        draw.text((box[0] + width + 2, box[1] + width + 2), f"{i + 1} {label}", fill=colour)
    return im


def data_uri(image: Any, max_side: int = 320, quality: int = 80) -> str:
    """A PIL image or an image file path -> a small JPEG data URI (empty string if unreadable)."""
    from PIL import Image

    try:
        im = image if not isinstance(image, (str, os.PathLike)) else Image.open(image)
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
    except (OSError, ValueError):
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


#: exactly what :func:`data_uri` produces; any other data: URI did not come from this module
_OWN_DATA_URI = re.compile(r"^data:image/jpeg;base64,[A-Za-z0-9+/]*={0,2}$")

#: a hit (ProductHit-like dict) -> the ``src`` of its thumbnail, "" for none
ThumbnailLookup = Callable[[Mapping[str, Any]], str]


def thumbnail_src(image_url: str) -> str:
    """A hit's image_url as an ``<img src>``: only a remote http(s) URL that passes the contract
    rule; anything else ("/etc/passwd", file:, javascript:, data:) gives "" (no thumbnail)."""
    return safe_image_url(image_url)


def remote_thumbnail(hit: Mapping[str, Any]) -> str:
    """The default lookup: the hit's own image_url (``shoplens search --html``)."""
    return thumbnail_src(str(hit.get("image_url") or ""))


class LocalThumbnails:
    """product_id -> a data: URI of a local image the *caller* chose (e.g. the demo's iconic image
    per product). Paths come from the caller, never from a hit, so a hit cannot make the report
    read a file of its choosing. Each image is encoded once."""

    def __init__(self, paths: Mapping[str, str | os.PathLike[str]], max_side: int = 160) -> None:
        self.paths = dict(paths)
        self.max_side = max_side
        self._cache: dict[str, str] = {}

    def __call__(self, hit: Mapping[str, Any]) -> str:
        pid = str(hit.get("product_id") or "")
        if pid not in self.paths:
            return ""
        if pid not in self._cache:
            self._cache[pid] = data_uri(self.paths[pid], self.max_side)
        return self._cache[pid]


def _safe_src(src: str) -> str:
    """Last check on any ``src`` before it is written: a data: URI of our own shape or a URL the
    contract accepts; a lookup that returns anything else shows no thumbnail."""
    return src if _OWN_DATA_URI.match(src) else safe_image_url(src)


def _attr(value: str) -> str:
    """An attribute value, quoted and escaped (quote=True escapes both ' and ")."""
    return "'" + html.escape(value, quote=True) + "'"


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


@dataclass
class ReportCard:
    """One query photo with its objects and their hits (what the demo and `shoplens search` render).

    ``objects`` are listed in the order (and with the numbers and colours) :func:`annotate`
    drew their boxes; ``best``, when given, is the photo's answer over all of them (every
    object's hits merged per product) and is shown first.
    """

    title: str
    photo: Any  # PIL image, already annotated
    objects: list[dict[str, Any]]  # {"label", "score", "box", "hits": [ProductHit-like dicts], "expected": product id or None}
    best: list[dict[str, Any]] | None = None
    expected: Any = None  # the product the photo shows, when known: marks the answer's hits


_CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}.card{border:1px solid #ddd;border-radius:8px;padding:12px;margin:12px 0;display:flex;gap:16px}
.photo img{max-width:320px;border-radius:4px}.hits{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.hit{width:130px;font-size:12px;text-align:center;border:2px solid transparent;border-radius:6px;padding:4px}
.hit img{max-width:120px;max-height:120px}.ok{border-color:#2e7d32;background:#e8f5e9}.obj{margin-bottom:8px}.meta{color:#666;font-size:13px}"""


def _hit_html(hit: Mapping[str, Any], rank: int, expected: Any, thumbnail: ThumbnailLookup) -> str:
    ok = expected is not None and hit.get("product_id") == expected
    src = _safe_src(thumbnail(hit))
    img = f"<img src={_attr(src)}>" if src else ""
    name = _text(hit.get("title") or hit.get("product_id") or "")
    score = float(hit.get("score") or 0)
    return f"<div class='hit{' ok' if ok else ''}'>{img}<div>#{rank} {name}</div><div class='meta'>{score:.3f}{' &#10003;' if ok else ''}</div></div>"


def _box_text(box: Any) -> str:
    try:
        return " box [" + ", ".join(str(round(float(v))) for v in box) + "]"
    except (TypeError, ValueError):
        return ""


def _card_html(card: ReportCard, thumbnail: ThumbnailLookup) -> str:
    parts = [f"<div class='card'><div class='photo'><div class='meta'>{_text(card.title)}</div><img src={_attr(data_uri(card.photo, 480))}></div><div>"]
    if card.best is not None:
        parts.append("<div class='obj best'><div class='meta'><b>best match</b>: every object's results merged per product</div><div class='hits'>")
        parts += [_hit_html(hit, rank, card.expected, thumbnail) for rank, hit in enumerate(card.best, start=1)]
        parts.append("</div></div>")
    for i, obj in enumerate(card.objects):
        r, g, b = box_colour(i)
        box = _box_text(obj["box"]) if obj.get("box") is not None else ""
        parts.append(f"<div class='obj'><div class='meta'><span style='color:#{r:02x}{g:02x}{b:02x}'>&#9632; object {i + 1}</span>: "
                     f"{_text(obj.get('label') or '')} {float(obj.get('score') or 0):.2f}{_text(box)}</div><div class='hits'>")
        parts += [_hit_html(hit, rank, obj.get("expected", card.expected), thumbnail) for rank, hit in enumerate(obj.get("hits", []), start=1)]
        parts.append("</div></div>")
    parts.append("</div></div>")
    return "".join(parts)


def render_html(cards: list[ReportCard], title: str, summary_html: str = "", thumbnail: ThumbnailLookup = remote_thumbnail) -> str:
    """The report page. ``summary_html`` is trusted markup written by the caller (escape what
    goes into it); ``thumbnail`` maps a hit to its image (default: its remote image_url)."""
    head = f"<!doctype html><html><head><meta charset='utf-8'><title>{_text(title)}</title><style>{_CSS}</style></head><body>"
    return "".join([head, f"<h1>{_text(title)}</h1>", summary_html, *(_card_html(c, thumbnail) for c in cards), "</body></html>"])
