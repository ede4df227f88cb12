"""Offline queue: persists vectors only, replays when back, drops expired / other-model entries with a reason."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import numpy as np

from scripted_http import Scripted, ScriptedServer
from shoplens.sdk.client import RetryPolicy, ShoplensClient
from shoplens.sdk.offline_queue import DropReason, OfflineQueue

MID = "resnet-256d-0123456789ab"
NEW = "resnet-256d-ffffffffffff"
FAST = RetryPolicy(max_retries=1, base_delay=0.01)
BATCH_OK = {"model_id": MID, "results": [{"index": 0, "hits": [{"product_id": "p", "score": 0.8, "image_id": "i"}]}], "grouping": "native", "took_ms": 1}


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def test_queue_survives_restart_and_replays_when_back(tmp_path: Path) -> None:
    q = OfflineQueue(tmp_path / "q.db")
    e1 = q.enqueue([np.ones(256)], model_id=MID, top_k=3)
    q.enqueue([np.arange(256.0)], model_id=MID)
    q.close()

    q = OfflineQueue(tmp_path / "q.db")  # the app restarted
    assert [e.id for e in q.pending()][0] == e1.id and len(q) == 2
    with ShoplensClient(_dead_url(), retry=FAST) as c:
        assert q.replay(c) == [] and len(q) == 2  # still offline: nothing lost
    with ScriptedServer([Scripted(200, BATCH_OK), Scripted(200, BATCH_OK)]) as srv, ShoplensClient(srv.url, retry=FAST) as c:
        out = q.replay(c)
    assert [o.response is not None for o in out] == [True, True] and len(q) == 0
    assert srv.requests[0]["body"]["top_k"] == 3


def test_only_vectors_and_options_are_stored(tmp_path: Path) -> None:
    q = OfflineQueue(tmp_path / "q.db")
    q.enqueue([np.ones(16)], model_id=MID, encoding="f16")
    q.close()
    db = sqlite3.connect(tmp_path / "q.db")
    cols = [r[1] for r in db.execute("PRAGMA table_info(searches)")]
    assert cols == ["id", "created_at", "expires_at", "model_id", "encoding", "vectors", "options"]
    (vectors,) = db.execute("SELECT vectors FROM searches").fetchone()
    assert len(json.loads(vectors)[0]) == 44  # base64 of 16 f16 values, nothing else


def test_expired_and_model_mismatch_are_dropped_with_reasons(tmp_path: Path) -> None:
    q = OfflineQueue(tmp_path / "q.db", ttl_s=60)
    old = q.enqueue([np.ones(8)], model_id=MID, ttl_s=0)
    other = q.enqueue([np.ones(8)], model_id=NEW)
    rejected_by_server = q.enqueue([np.ones(8)], model_id=MID)
    mismatch = {"error": {"code": "model_mismatch", "message": f"collection serves {NEW}, vector is {MID}"}}
    with ScriptedServer([Scripted(409, mismatch)]) as srv, ShoplensClient(srv.url, retry=FAST) as c:
        out = {o.entry.id: o for o in q.replay(c, current_model_id=MID)}
    assert out[old.id].dropped is DropReason.EXPIRED
    assert out[other.id].dropped is DropReason.MODEL_MISMATCH and NEW in out[other.id].detail
    assert out[rejected_by_server.id].dropped is DropReason.MODEL_MISMATCH and "collection serves" in out[rejected_by_server.id].detail
    assert len(q) == 0 and {d[1] for d in q.dropped()} == {"expired", "model_mismatch"}
