"""The search service in a thread of this process (the demo and the device-flow benchmark run it)."""

from __future__ import annotations

import threading
import time
from typing import Any


class BackgroundService:
    """The FastAPI app under uvicorn in a thread of this process, on 127.0.0.1."""

    def __init__(self, settings: Any) -> None:
        import socket

        import uvicorn

        from shoplens.cloud.app import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "BackgroundService":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the search service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_until_indexed(client: Any, model_id: str, dim: int, fast_ms: float = 40.0, timeout_s: float = 120.0) -> float:
    """Milvus Lite indexes freshly written rows in the background (seconds); until then a query
    costs hundreds of ms. Measuring the demo's latency before that would measure the wrong thing."""
    import numpy as np

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    streak = 0
    while time.perf_counter() - t0 < timeout_s:
        took = client.search(rng.standard_normal(dim), model_id=model_id, top_k=5).took_ms
        streak = streak + 1 if took < fast_ms else 0
        if streak >= 3:
            break
        time.sleep(0.2)
    return time.perf_counter() - t0
