"""Akto for LiteLLM: ``guardrail: akto_hook.AktoGuardrail`` in config.yaml, or the callback
``akto_hook.akto_callback`` (``AktoLogger``) in LiteLLM's callback lists, on the proxy or in the SDK."""

from typing import Any

from akto_ingest.errors import ConfigError

from .callback import AktoLogger, default_callback
from .guardrail import AktoGuardrail

__all__ = ["AktoGuardrail", "AktoLogger", "ConfigError"]


def __getattr__(name: str) -> Any:
    # akto_callback is built on first use, not at import: importing costs nothing, and a bad config
    # raises ConfigError where the callback is first named (LiteLLM's config load, or the user's code).
    if name == "akto_callback":
        return default_callback()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
