"""Loading a collection: waited for while its progress moves, released and issued again once when it stalls.

A 10M-row collection takes 30-50 s to load on a 2-core server, longer than ``load_timeout_s``;
releasing it half-way would make a large catalog unservable. A load that stands still (seen on a
reopened Milvus Lite file) must still end in one retry and then a 503, not a parked thread.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from pymilvus.client.types import LoadState

from shoplens.cloud.milvus_conn import MilvusConnection
from shoplens.cloud.store_errors import CollectionNotReady
from shoplens.settings import Settings

from cloudkit import ADMIN, DEVICE


class ScriptedLoads:
    """A client whose loads report the progress a script gives for the seconds since each load began."""

    def __init__(self, *scripts: Any) -> None:
        self.scripts = list(scripts)  # one per load_collection call: seconds since the load -> progress or "loaded"
        self.loads: list[dict[str, Any]] = []
        self.releases = 0
        self._started = 0.0

    def load_collection(self, name: str, timeout: float | None = None, **kwargs: Any) -> None:
        self.loads.append({"name": name, "timeout": timeout, **kwargs})
        self._started = time.monotonic()

    def release_collection(self, name: str, timeout: float | None = None) -> None:
        self.releases += 1

    def get_load_state(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        progress = self.scripts[len(self.loads) - 1](time.monotonic() - self._started)
        if progress == "loaded":
            return {"state": LoadState.Loaded}
        return {"state": LoadState.Loading, "progress": progress}


def _connection(tmp_path, load_timeout_s: float) -> MilvusConnection:
    return MilvusConnection(Settings(milvus_uri=str(tmp_path / "c.db"), admin_keys=[ADMIN], device_keys=[DEVICE],
                                     load_timeout_s=load_timeout_s))


def test_a_load_that_keeps_moving_is_waited_for_past_the_timeout(tmp_path) -> None:
    # 5 % every 0.1 s: 2 s in all, seven times the 0.3 s allowed without progress
    client = ScriptedLoads(lambda s: "loaded" if s >= 2.0 else int(s / 0.1) * 5)
    t0 = time.monotonic()
    _connection(tmp_path, 0.3)._load(client, "catalog")
    assert time.monotonic() - t0 >= 2.0
    assert client.releases == 0
    assert len(client.loads) == 1 and client.loads[0]["_async"] is True


def test_a_stalled_load_is_released_and_issued_once_more_then_not_ready(tmp_path) -> None:
    client = ScriptedLoads(lambda s: 40, lambda s: 40)
    t0 = time.monotonic()
    with pytest.raises(CollectionNotReady):
        _connection(tmp_path, 0.3)._load(client, "catalog")
    assert 0.6 <= time.monotonic() - t0 < 5
    assert (len(client.loads), client.releases) == (2, 1)


def test_a_stalled_load_that_succeeds_when_issued_again_is_loaded(tmp_path) -> None:
    client = ScriptedLoads(lambda s: 0, lambda s: "loaded" if s >= 0.2 else 50)
    _connection(tmp_path, 0.3)._load(client, "catalog")
    assert (len(client.loads), client.releases) == (2, 1)


def test_a_closing_connection_stops_waiting(tmp_path) -> None:
    conn = _connection(tmp_path, 30)
    client = ScriptedLoads(lambda s: int(s * 10), lambda s: int(s * 10))
    conn._closed = True
    t0 = time.monotonic()
    with pytest.raises(CollectionNotReady):
        conn._load(client, "catalog")
    assert time.monotonic() - t0 < 1
    assert (len(client.loads), client.releases) == (1, 0)  # a shutdown never releases what other instances serve


def test_a_real_collection_loads_through_its_progress(backend) -> None:
    """The real backends answer the asynchronous load and the load state this wait relies on."""
    kind, make = backend
    conn = MilvusConnection(make(load_timeout_s=5.0))
    try:
        c = conn._connect()
        name = f"loadtest_{kind}"
        if c.has_collection(name):
            c.drop_collection(name)
        c.create_collection(name, dimension=16, metric_type="COSINE")
        rng = np.random.default_rng(0)
        c.insert(name, [{"id": i, "vector": rng.normal(size=16).tolist()} for i in range(200)])
        c.flush(name)
        c.release_collection(name)
        assert c.get_load_state(name)["state"] == LoadState.NotLoad
        conn._load(c, name)
        assert c.get_load_state(name)["state"] == LoadState.Loaded
        hits = c.search(name, [rng.normal(size=16).tolist()], limit=3)
        assert len(hits[0]) == 3
        c.drop_collection(name)
    finally:
        conn.close()
