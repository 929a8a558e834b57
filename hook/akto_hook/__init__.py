"""Akto for LiteLLM: ``guardrail: akto_hook.AktoGuardrail`` in config.yaml, or the callback
``akto_hook.akto_callback`` (``AktoLogger``) in LiteLLM's callback lists, on the proxy or in the SDK."""

from typing import Any

from akto_ingest.errors import ConfigError, UnsupportedLiteLLM

from . import litellm_version

# Before anything below imports LiteLLM's internals: a release outside the range stops here, with
# the version found and the range needed.
litellm_version.check(litellm_version.installed())

from .callback import AktoLogger, default_callback  # noqa: E402
from .guardrail import AktoGuardrail  # noqa: E402

__all__ = ["AktoGuardrail", "AktoLogger", "ConfigError", "UnsupportedLiteLLM"]


def __getattr__(name: str) -> Any:
    # akto_callback is built on first use, not at import: importing costs nothing, and a bad config
    # raises ConfigError where the callback is first named (LiteLLM's config load, or the user's code).
    if name == "akto_callback":
        return default_callback()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
