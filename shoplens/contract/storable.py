"""What a request body may carry: values that JSON parses but UTF-8, Milvus or a filter cannot hold.

Python's JSON parser accepts a lone surrogate (``"\\ud800"``), ``NaN``,
``Infinity``, numbers that overflow to infinity (``1e400``) and integers of any
size. None of them can be stored or compared by Milvus (UTF-8 strings, int64,
finite doubles), and before this check they surfaced as a 500 deep inside the
client library. One walk over the parsed body names the first offending value,
so the service answers a 422 with the contract's error body instead.
"""

from __future__ import annotations

import math
from typing import Any

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def _where(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path) or "body"


def unstorable(value: Any, path: tuple[str | int, ...] = ()) -> str | None:
    """Why ``value`` (a parsed JSON document) cannot be stored, naming where; None when it can."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"{_where(path)}: not valid Unicode text (lone surrogate at character {exc.start}); send UTF-8"
        return None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            return f"{_where(path)}: integer outside the 64-bit range"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{_where(path)}: not a finite number"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = unstorable(key, (*path, "<key>")) or unstorable(item, (*path, str(key)))
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = unstorable(item, (*path, i))
            if problem:
                return problem
    return None
