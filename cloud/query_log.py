"""Opt-in query log: for operators who want to evaluate search quality on real traffic.

Off unless ``SHOPLENS_QUERY_LOG`` names a file. Query vectors are derived from
shoppers' photos, so this is personal data: the file is created 0600, holds
only what evaluation needs (time, model id, the vectors as sent, the product
ids returned; no key, no IP), and is rotated away after
``SHOPLENS_QUERY_LOG_MAX_BYTES`` so it cannot grow without bound.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path


class QueryLog:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, model_id: str, encoding: str, vectors: list[str], product_ids: list[list[str]]) -> None:
        line = json.dumps({"t": round(time.time(), 3), "model_id": model_id, "encoding": encoding, "vectors": vectors, "products": product_ids}) + "\n"
        with self._lock:
            if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                os.replace(self.path, self.path.with_suffix(self.path.suffix + ".1"))  # keep one previous file
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(line)
