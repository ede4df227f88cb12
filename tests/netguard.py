"""A socket guard: any connection or DNS lookup beyond loopback is refused and recorded.

Installed for the whole test session by conftest.py; the session fails if
anything tried to reach the outside, even when the code under test swallowed
the error (which is exactly how phone-home code behaves).
"""

from __future__ import annotations

import ipaddress
import socket

ATTEMPTS: list[str] = []
_orig_connect = socket.socket.connect
_orig_connect_ex = socket.socket.connect_ex
_orig_getaddrinfo = socket.getaddrinfo


class NetworkGuardError(ConnectionRefusedError):
    """Raised instead of opening a non-loopback connection."""


def is_loopback(host: object) -> bool:
    if host in (None, "", "localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _is_ip_literal(host: object) -> bool:
    try:
        ipaddress.ip_address(str(host).split("%")[0])
        return True
    except ValueError:
        return False


def _check(sock: socket.socket, address: object) -> None:
    if sock.family == getattr(socket, "AF_UNIX", None):
        return
    host = address[0] if isinstance(address, tuple) else address
    if not is_loopback(host):
        ATTEMPTS.append(f"connect {address!r}")
        raise NetworkGuardError(f"test network guard: connection to {address!r} refused (loopback only)")


def _connect(self: socket.socket, address: object) -> None:
    _check(self, address)
    return _orig_connect(self, address)


def _connect_ex(self: socket.socket, address: object) -> int:
    _check(self, address)
    return _orig_connect_ex(self, address)


def _getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if isinstance(host, bytes):
        host = host.decode()
    if not is_loopback(host) and not _is_ip_literal(host):  # literals need no DNS; connect() guards them
        ATTEMPTS.append(f"getaddrinfo {host!r}")
        raise socket.gaierror(socket.EAI_NONAME, f"test network guard: lookup of {host!r} refused")
    return _orig_getaddrinfo(host, *args, **kwargs)


def install() -> None:
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _getaddrinfo  # type: ignore[assignment]
