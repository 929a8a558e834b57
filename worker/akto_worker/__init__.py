"""The Akto ingestion worker. Run it with ``arq akto_worker.WorkerSettings``.

``WorkerSettings`` lives in ``settings.py``, which reads the configuration when it is imported; this
package imports it only when ``WorkerSettings`` is looked up, so the worker's other modules can be
imported without any configuration, and a bad configuration fails the worker at start with a
message naming the variable.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WorkerSettings"]


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        from .settings import WorkerSettings

        return WorkerSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
