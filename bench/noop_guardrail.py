"""A guardrail that does nothing: the control case for LiteLLM's own cost of a post-call guardrail.

LiteLLM registers every configured guardrail as a logging callback too, and with a callback present it
does per-request logging work (the standard logging payload, the success handlers) that a proxy
without one skips. Driving a proxy with this class separates that cost, which any post-call
guardrail pays, from what our hook itself adds. Loaded as ``guardrail: bench.noop_guardrail.NoopGuardrail``
with the repository on PYTHONPATH.
"""

from __future__ import annotations

from typing import Any

from litellm.integrations.custom_guardrail import CustomGuardrail


class NoopGuardrail(CustomGuardrail):
    def __init__(self, **kwargs: Any) -> None:
        kwargs["default_on"] = True  # run on every request, as ours does by default
        super().__init__(**kwargs)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        return None
