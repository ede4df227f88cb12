"""Turn contract :class:`SearchFilters` into a Milvus boolean expression, safely.

Every value that comes from a client is rendered by :func:`literal` (strings
JSON-escaped, numbers checked finite, booleans spelled the Milvus way) and
every attribute key is checked against a strict pattern, so no request can
inject operators into the expression. The field names are ours, never the
client's.
"""

from __future__ import annotations

import math
import re

from shoplens.contract.schemas import SearchFilters

from shoplens.cloud.store_errors import InvalidRequest

#: attribute keys a filter may name: plain identifiers, nothing to escape
ATTRIBUTE_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")

#: the sentinel stored for "no price": prices are >= 0, so range filters exclude it
NO_PRICE = -1.0


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_OTHER_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def has_control(value: str) -> bool:
    """True when ``value`` holds a character no Milvus string literal can carry here."""
    return bool(_OTHER_CONTROL.search(value))


def quote(value: str) -> str:
    """A double-quoted Milvus string literal.

    Only backslash, quote, \\n, \\t and \\r are escaped: Milvus Lite rejects
    ``\\uXXXX`` escapes, so non-ASCII text goes through as UTF-8 and the other
    control characters (never part of a real category or attribute) are refused.
    """
    if _OTHER_CONTROL.search(value):
        raise InvalidRequest("filter strings must not contain control characters")
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def literal(value: str | int | float | bool) -> str:
    """A Milvus expression literal for one client value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"filter value must be finite, got {value}")
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    raise InvalidRequest(f"unsupported filter value type {type(value).__name__}")


def build_filter(filters: SearchFilters | None) -> str:
    """The expression for ``filters`` ("" when there is nothing to filter)."""
    if filters is None:
        return ""
    parts: list[str] = []
    if filters.category_in is not None:
        if not filters.category_in:
            raise InvalidRequest("filters.category_in must not be empty (omit it instead)")
        parts.append("category in [" + ", ".join(literal(c) for c in filters.category_in) + "]")
    if filters.price_min is not None and filters.price_max is not None and filters.price_min > filters.price_max:
        raise InvalidRequest(f"filters.price_min ({filters.price_min}) is greater than filters.price_max ({filters.price_max})",
        )
    if filters.price_min is not None or filters.price_max is not None:
        parts.append(f"price >= {literal(float(filters.price_min or 0.0))}")
        if filters.price_max is not None:
            parts.append(f"price <= {literal(float(filters.price_max))}")
    for key, value in (filters.attributes or {}).items():
        if not ATTRIBUTE_KEY_RE.fullmatch(key):
            raise InvalidRequest(f"attribute filter key {key!r} is not allowed (letters, digits, _ . - ; 64 max)",
                details={"key": key},
            )
        parts.append(f"attributes[{quote(key)}] == {literal(value)}")
    return " and ".join(f"({p})" for p in parts)


def eq_expr(field: str, value: str) -> str:
    """``field == "value"`` for one of our own VARCHAR fields."""
    return f"{field} == {literal(value)}"
