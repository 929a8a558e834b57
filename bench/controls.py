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
import orjson
from litellm.integrations.custom_guardrail import CustomGuardrail

WAIT_SECONDS = float(os.environ["BENCH_WAIT_MS"]) / 1000  # the fake Akto's delay, set by bench/context.py
CHECK_PATH = "/api/http-proxy?akto_connector=litellm&guardrails=true"
# Akto's envelope for a one-line prompt, built once: the control pays for the round trip only.
CHECK_BODY = orjson.dumps(
    {
        "path": "/v1/chat/completions",
        "method": "POST",
        "requestHeaders": "{}",
        "responseHeaders": "{}",
        "requestPayload": orjson.dumps({"messages": [{"role": "user", "content": "hello"}]}).decode(),
        "responsePayload": "{}",
        "ip": "",
        "time": "0",
        "statusCode": "200",
        "type": "HTTP/1.1",
        "status": "200",
        "akto_account_id": "1000000",
        "akto_vxlan_id": "0",
        "is_pending": "false",
        "source": "MIRRORING",
    }
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
