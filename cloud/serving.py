"""What ``shoplens serve`` hands uvicorn besides the app: proxy trust, log redaction, shared state.

- Proxy headers: uvicorn by default believes ``X-Forwarded-For`` from
  127.0.0.1, so any local client (or a proxy that passes the header through)
  can pick its own address and with it a fresh anonymous rate-limit bucket.
  They are trusted only from ``TRUSTED_PROXIES`` (empty: never).
- Access log: uvicorn's access logger gets :class:`RedactCredentials`, so a
  key sent in a query string is not written to the log.
- Workers: with ``--workers N`` every worker is a separate process; the
  rate-limit buckets go to one SQLite file they all open
  (``SHOPLENS_SHARED_STATE_PATH``), created here for this run and removed after.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shoplens.settings import Settings

SHARED_STATE_ENV = "SHOPLENS_SHARED_STATE_PATH"


def log_config() -> dict[str, Any]:
    """uvicorn's default logging config with the credential-redacting filter on its access logger."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_credentials"] = {"()": "shoplens.cloud.query_keys.RedactCredentials"}
    config["loggers"].setdefault("uvicorn.access", {})["filters"] = ["redact_credentials"]
    return config


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` (the same for one worker and for the factory path)."""
    trusted = [p.strip() for p in settings.trusted_proxies if p.strip()]
    return {
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
        "log_config": log_config(),
    }


@contextmanager
def shared_state_for_workers(workers: int) -> Iterator[Path | None]:
    """With several workers: a SQLite file for their shared rate-limit state, named in the environment
    the workers inherit. An explicit ``SHOPLENS_SHARED_STATE_PATH`` is kept (several instances on one
    machine may share it on purpose); one worker needs none."""
    if workers <= 1:
        yield None
        return
    if os.environ.get(SHARED_STATE_ENV):
        yield Path(os.environ[SHARED_STATE_ENV])
        return
    folder = Path(tempfile.mkdtemp(prefix="shoplens-serve-"))
    path = folder / "limits.db"
    os.environ[SHARED_STATE_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(SHARED_STATE_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)
