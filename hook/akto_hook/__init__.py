"""Akto guardrail for the LiteLLM proxy: ``guardrail: akto_hook.AktoGuardrail`` in config.yaml."""

from akto_ingest.errors import ConfigError

from .guardrail import AktoGuardrail

__all__ = ["AktoGuardrail", "ConfigError"]
