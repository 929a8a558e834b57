"""The Akto ingestion worker. Run it with ``arq akto_worker.WorkerSettings``.

``WorkerSettings`` is built on first access from the environment (see ``settings.py``), so importing
this package reads no configuration and a bad configuration fails the worker at start with a
message naming the variable.
"""

from __future__ import annotations

from typing import Any

from .settings import build_worker_settings

__all__ = ["WorkerSettings", "build_worker_settings"]


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        return build_worker_settings()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
