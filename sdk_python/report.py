"""Render search results for people: an annotated photo and a self-contained HTML page.

Thumbnails of local catalog images are embedded as data URIs so the page can
be opened anywhere without a web server.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def annotate(rgb: np.ndarray, boxes: list[tuple[float, float, float, float]], labels: list[str]) -> Any:
    """The photo with numbered boxes (a PIL image)."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    width = max(2, round(min(im.size) / 200))
    for i, (box, label) in enumerate(zip(boxes, labels)):
        colour = _COLOURS[i % len(_COLOURS)]
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


def thumbnail_src(image_url: str) -> str:
    if image_url.startswith(("http://", "https://", "data:")):
        return image_url
    path = image_url.removeprefix("file://")
    return data_uri(path, 160) if path and Path(path).is_file() else ""


@dataclass
class ReportCard:
    """One query photo with its objects and their hits (what the demo and `shoplens search` render)."""

    title: str
    photo: Any  # PIL image, already annotated
    objects: list[dict[str, Any]]  # {"label", "score", "hits": [ProductHit-like dicts], "expected": product id or None}


_CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}.card{border:1px solid #ddd;border-radius:8px;padding:12px;margin:12px 0;display:flex;gap:16px}
.photo img{max-width:320px;border-radius:4px}.hits{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.hit{width:130px;font-size:12px;text-align:center;border:2px solid transparent;border-radius:6px;padding:4px}
.hit img{max-width:120px;max-height:120px}.ok{border-color:#2e7d32;background:#e8f5e9}.obj{margin-bottom:8px}.meta{color:#666;font-size:13px}"""


def render_html(cards: list[ReportCard], title: str, summary_html: str = "") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>", summary_html]
    for card in cards:
        parts.append(f"<div class='card'><div class='photo'><div class='meta'>{html.escape(card.title)}</div><img src='{data_uri(card.photo, 480)}'></div><div>")
        for i, obj in enumerate(card.objects):
            parts.append(f"<div class='obj'><div class='meta'>object {i + 1}: {html.escape(str(obj.get('label') or ''))} {obj.get('score', 0):.2f}</div><div class='hits'>")
            for rank, hit in enumerate(obj.get("hits", []), start=1):
                ok = obj.get("expected") is not None and hit.get("product_id") == obj.get("expected")
                src = thumbnail_src(hit.get("image_url", ""))
                img = f"<img src='{src}'>" if src else ""
                name = html.escape(hit.get("title") or hit.get("product_id", ""))
                parts.append(f"<div class='hit{' ok' if ok else ''}'>{img}<div>#{rank} {name}</div><div class='meta'>{hit.get('score', 0):.3f}{' &#10003;' if ok else ''}</div></div>")
            parts.append("</div></div>")
        parts.append("</div></div>")
    parts.append("</body></html>")
    return "".join(parts)
