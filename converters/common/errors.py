"""The converters' one error type, inside the project's error hierarchy."""

from __future__ import annotations

from shoplens.contract.errors import ShoplensError


class ConversionError(ShoplensError, RuntimeError):
    """A conversion step failed; the message says which and why.

    A ``ShoplensError`` so callers can handle every project error one way, and
    still a ``RuntimeError`` so code that caught the old class keeps working.
    """
