"""Control guardrails: what LiteLLM itself costs, so the bench can tell it apart from our hook.

- ``NoopGuardrail`` (post_call): LiteLLM registers every configured guardrail as a logging callback
  too, and with a callback present it does per-request logging work (the standard logging payload,
  the success handlers) that a proxy without one skips. Any logging guardrail pays that.
- ``WaitGuardrail`` (pre_call): only waits Akto's delay. What any pre_call guardrail that waits on
  Akto pays before Akto's own time is counted: LiteLLM's pre_call plumbing and the proxy idling in
  the middle of a request.
- ``AskGuardrail`` (pre_call): only POSTs one fixed, small check to ``AKTO_GUARDRAIL_API_BASE`` on a
  kept aiohttp session and waits for the answer: the floor for a guardrail that asks Akto over HTTP.

Loaded as ``guardrail: bench.controls.<Class>`` with the repository on PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
from litellm.integrations.custom_guardrail import CustomGuardrail
from pydantic import SecretStr

from akto_ingest.config import AktoSettings
from akto_ingest.record import Record
from akto_ingest.wire import encode, envelope, http_proxy_params

WAIT_SECONDS = float(os.environ["BENCH_WAIT_MS"]) / 1000  # the fake Akto's delay, set by bench/context.py
CHECK_PATH = "/api/http-proxy?" + "&".join(
    f"{k}={v}" for k, v in http_proxy_params(check_request=True, check_response=False, ingest=False).items()
)
# Akto's envelope for a one-line prompt, built once: the control pays for the round trip only.
CHECK_BODY = encode(
    envelope(
        Record(id="bench-control", mode="block", request_body={"messages": [{"role": "user", "content": "hello"}]}),
        AktoSettings(
            akto_base_url=os.environ["AKTO_GUARDRAIL_API_BASE"], akto_api_key=SecretStr(os.environ["AKTO_API_KEY"])
        ),
    )
)


class _Control(CustomGuardrail):
    def __init__(self, **kwargs: Any) -> None:
        kwargs["default_on"] = True  # run on every request, as ours does by default
        super().__init__(**kwargs)


class NoopGuardrail(_Control):
    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        return None


class WaitGuardrail(_Control):
    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        await asyncio.sleep(WAIT_SECONDS)
        return data


class AskGuardrail(_Control):
    _session: aiohttp.ClientSession | None = None

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        if self._session is None:
            headers = {"Authorization": os.environ["AKTO_API_KEY"], "Content-Type": "application/json"}
            self._session = aiohttp.ClientSession(headers=headers)
        async with self._session.post(os.environ["AKTO_GUARDRAIL_API_BASE"] + CHECK_PATH, data=CHECK_BODY) as resp:
            resp.raise_for_status()
            await resp.read()
        return data
