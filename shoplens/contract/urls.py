"""The one rule for ``image_url``: what a catalog may store and a phone may be sent.

``image_url`` travels from the shop's catalog, through the service, to every
device that gets the product in its results, and into HTML. Anything but a
remote web URL is a leak or an attack there: a local path tells the world how
the import machine is laid out, ``file:`` makes an app read its own disk,
``javascript:``/``data:`` run or render attacker content, a UNC path makes
Windows open an SMB connection (and send credentials), and userinfo puts a
password on every phone. So the rule is an allow-list: empty, or an absolute
``https://`` URL with a host (``http://`` structurally; whether a service takes
it is its ``allow_http_image_urls`` setting). The service, the catalog reader,
the importer and the HTML report all call :func:`check_image_url`, so there is
one definition.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

FIELD = "image_url"
ACCEPTED = "empty or an absolute https:// URL with a host (http:// only where the service allows it)"

#: the rule as a JSON Schema pattern for the published API: the default service's subset (https://,
#: host names and IPv4, printable ASCII, no IPv6 literals), so generated clients and fuzzers produce URLs it accepts
SCHEMA_PATTERN = r"^$|^https://[A-Za-z0-9][A-Za-z0-9.-]{0,62}(:[0-9]{1,4})?([/?#][!#-;=?-\[\]-_a-~]*)?$"

#: whitespace, C0/C1 controls, DEL, and the characters a URL never carries unencoded that
#: would end an HTML attribute or a markup tag (RFC 3986 excludes them)
_FORBIDDEN_CHARS = re.compile(r'[\s\x00-\x1f\x7f-\x9f\\"<>`]')
#: a host name: letters (IDN allowed), digits, dots, hyphens, underscores
_HOSTNAME = re.compile(r"^[\w.-]+$")


class ImageUrlError(ValueError):
    """An ``image_url`` outside the rule; the message names the field and what is accepted."""


def _fail(problem: str, field: str) -> ImageUrlError:
    return ImageUrlError(f"{field} {problem}; {field} must be {ACCEPTED}")


def _split(value: str, field: str) -> SplitResult:
    """urlsplit plus its lazy checks (the port), as one failure mode."""
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError as exc:
        raise _fail(f"is not a well-formed URL ({exc})", field) from None
    return parts


def _check_host(parts: SplitResult, field: str) -> None:
    if "@" in parts.netloc:
        raise _fail("must not contain user name or password (user:pass@)", field)
    host = parts.hostname or ""
    if not host:
        raise _fail("has no host", field)
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _fail(f"has an invalid IPv6 host {host!r}", field) from None
    elif not _HOSTNAME.match(host) or host.strip(".") == "":
        raise _fail(f"has an invalid host {host!r}", field)


def check_image_url(value: str, *, allow_http: bool = True, field: str = FIELD) -> str:
    """Return ``value`` if it may be stored and sent to devices; raise :class:`ImageUrlError` if not.

    ``allow_http``: whether ``http://`` passes. The contract accepts it structurally (a
    service decides with its setting); callers that must be strict pass ``False``.
    ``field``: how the message names the value (e.g. ``images[3].image_url``).
    """
    if value == "":
        return value
    if _FORBIDDEN_CHARS.search(value):
        raise _fail("must not contain whitespace, control characters, backslashes, double quotes, backticks or <>", field)
    parts = _split(value, field)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise _fail(f"is a {scheme}: URL" if scheme else "is a local path or relative reference", field)
    if not value[len(scheme) :].startswith("://"):
        raise _fail(f"is not an absolute URL ({scheme}://host/...)", field)
    if scheme == "http" and not allow_http:
        raise _fail("is an http:// URL and only https:// is allowed here (SHOPLENS_ALLOW_HTTP_IMAGE_URLS)", field)
    _check_host(parts, field)
    return value


def is_acceptable_image_url(value: str, *, allow_http: bool = True) -> bool:
    """True if :func:`check_image_url` accepts ``value`` (for callers that drop instead of refuse)."""
    try:
        check_image_url(value, allow_http=allow_http)
    except ImageUrlError:
        return False
    return True


def safe_image_url(value: object) -> str:
    """``value`` if it passes the rule (http allowed: it was accepted when stored), else "".

    For output: rows stored before the rule existed may hold local paths; they must
    never leave the service or reach an HTML page.
    """
    return value if isinstance(value, str) and is_acceptable_image_url(value, allow_http=True) else ""
