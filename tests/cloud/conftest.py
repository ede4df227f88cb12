"""Fixtures for the cloud service: real Milvus Lite files, a real Milvus server, seeded vectors.

The ``backend`` fixture parametrises a test over both storage backends, so a
behaviour that differs between Lite and a server fails a test. The server is
the PyPI ``milvus`` standalone (2.3.5), started once per session on loopback
with a temporary base dir; if it cannot start, its tests skip with the reason.
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoplens.settings import Settings

from cloudkit import ADMIN, DEVICE, Catalog, free_port

_server_error: str | None = None


class MilvusServerHandle:
    """The session's server. Its port can change on a restart: a port still in TIME_WAIT is
    skipped by the ``milvus`` package, so read ``uri`` after every restart."""

    def __init__(self, server: Any) -> None:
        self.server = server

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.listen_port}"

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[MilvusServerHandle]:
    """A Milvus 2.3.5 standalone started for this session (skips with the reason if it cannot start)."""
    global _server_error
    if _server_error is not None:
        pytest.skip(f"Milvus server unavailable: {_server_error}")
    try:
        from milvus import default_server
    except ImportError as exc:  # the dev extra is missing
        _server_error = f"PyPI 'milvus' not installed ({exc})"
        pytest.skip(_server_error)
    # The embedded etcd's peer port is fixed (2380): a second Milvus 2.3.5 on this machine would
    # time out after minutes, so say so at once.
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 2380))
        except OSError:
            _server_error = "port 2380 (embedded etcd peer) is busy: another Milvus server runs on this machine"
            print(f"\nMilvus server tests skip: {_server_error}")
            pytest.skip(_server_error)
    base = tempfile.mkdtemp(prefix="shoplens-milvus-server-")
    try:
        default_server.set_base_dir(base)
        default_server.listen_port = free_port()
        default_server.start()
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot run server tests here"
        _server_error = f"{type(exc).__name__}: {exc}"
        print(f"\nMilvus server could not start, server tests skip: {_server_error}")
        try:
            default_server.stop()
        except Exception:  # noqa: BLE001
            pass
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(_server_error)
    try:
        yield MilvusServerHandle(default_server)
    finally:
        default_server.stop()
        # Its data, logs and etcd are ~0.5 GB per session: left in /tmp they fill the disk in a day of runs.
        shutil.rmtree(base, ignore_errors=True)


SettingsFactory = Callable[..., Settings]


@pytest.fixture(params=["lite", pytest.param("server", marks=pytest.mark.milvus_server)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, SettingsFactory]]:
    """(name, make_settings): settings for a fresh catalog on Lite (own file) or the server (own alias)."""
    kind = request.param
    uri = str(tmp_path / "catalog.db") if kind == "lite" else request.getfixturevalue("milvus_server").uri
    alias = "t_" + re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[-60:]

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "milvus_uri": uri,
            "collection": alias,
            "admin_keys": [ADMIN],
            "device_keys": [DEVICE],
            "cache_dir": tmp_path / "cache",
            "index_params": {"M": 8, "efConstruction": 32},
            "milvus_timeout_s": 5.0,
        }
        values.update(overrides)
        return Settings(**values)

    yield kind, make


@pytest.fixture
def lite_settings(tmp_path: Path) -> SettingsFactory:
    """Settings for a fresh Lite file (tests of behaviour that does not depend on the backend)."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "milvus_uri": str(tmp_path / "catalog.db"),
            "collection": "catalog",
            "admin_keys": [ADMIN],
            "device_keys": [DEVICE],
            "cache_dir": tmp_path / "cache",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def client_for() -> Iterator[Callable[[Settings], Any]]:
    """Open TestClients (lifespan run) for settings; all are closed at teardown, releasing Lite files."""
    from fastapi.testclient import TestClient

    from shoplens.cloud.app import create_app

    opened: list[Any] = []

    def open_client(settings: Settings, **kwargs: Any) -> Any:
        c = TestClient(create_app(settings), **kwargs)
        c.__enter__()
        opened.append(c)
        return c

    yield open_client
    for c in reversed(opened):
        c.__exit__(None, None, None)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog()
