"""Akto's decision where LiteLLM users look: the request's standard logging payload and the
``x-litellm-applied-guardrails`` response header.

LiteLLM's own guardrails report every run through
``CustomGuardrail.add_standard_logging_guardrail_information_to_request_data``: LiteLLM's UI, spend
logs and logging integrations (Langfuse, OTEL, ...) read ``standard_logging_object
["guardrail_information"]`` from there. A guardrail that let a request through also names itself
in the request's ``applied_guardrails``, which the proxy returns as ``x-litellm-applied-guardrails``.
The inline check does both, once per check, with one of the statuses of :data:`Status`.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from typing import Any, Literal

from litellm.integrations.custom_guardrail import CustomGuardrail
from litellm.types.guardrails import GuardrailEventHooks
from litellm.types.utils import GuardrailStatus, GuardrailTracingDetail

from akto_ingest.wire import Verdict

from .check import Failure

log = logging.getLogger("akto_hook")

# LiteLLM (1.108.7 at least) imports its OpenTelemetry logger inside every guardrail report, in a
# try/except. Without opentelemetry-sdk that import fails, is not cached, and is searched for and
# executed again on each request: 0.5 ms of the request path on a 2-core VM. A failure remembered
# as None in sys.modules fails at once, the way Python caches a missing module.
OTEL_LOGGER = "litellm.integrations.otel.logger"


def remember_missing(module: str) -> None:
    """Import ``module`` once; if it cannot be imported, make every later import of it fail at once."""
    if module in sys.modules:
        return
    try:
        importlib.import_module(module)
    except ImportError:
        sys.modules[module] = None  # type: ignore[assignment]


remember_missing(OTEL_LOGGER)

Status = Literal["allowed", "flagged", "blocked", "masked", "fail_open", "fail_closed"]

# LiteLLM's own status for each of ours: a block is an intervention, as for its built-in guardrails;
# a mask passes (LiteLLM logs its own masks as "success" too); an alert or warn verdict is a flag;
# a fallback means Akto gave no verdict.
LITELLM_STATUS: dict[Status, GuardrailStatus] = {
    "allowed": "success",
    "masked": "success",
    "flagged": "guardrail_flagged",
    "blocked": "guardrail_intervened",
    "fail_open": "guardrail_failed_to_respond",
    "fail_closed": "guardrail_failed_to_respond",
}
# The request went on to the LLM: the proxy's applied-guardrails header names the guardrail.
PASSED: frozenset[Status] = frozenset({"allowed", "flagged", "masked", "fail_open"})


def report(
    guardrail: CustomGuardrail,
    data: dict[str, Any],
    status: Status,
    *,
    started: float,
    verdict: Verdict | None = None,
    failure: Failure | None = None,
    during_call: bool = False,
) -> None:
    """Record one inline check in ``data`` (the request LiteLLM logs). ``started`` is the check's
    start on :func:`time.time`'s clock; ``verdict`` gives Akto's reason and policy details;
    ``failure`` why a ``fail_open``/``fail_closed`` check had no verdict. Never raises: reporting
    must not decide a request."""
    try:
        _report(guardrail, data, status, started, verdict, failure, during_call)
    except Exception:
        log.exception("akto check could not be reported to LiteLLM call_id=%s", data.get("litellm_call_id"))


def _report(
    guardrail: CustomGuardrail,
    data: dict[str, Any],
    status: Status,
    started: float,
    verdict: Verdict | None,
    failure: Failure | None,
    during_call: bool,
) -> None:
    ended = time.time()
    response: dict[str, str] = {"akto": status}
    tracing: GuardrailTracingDetail = {"guardrail_action": status}
    if verdict is not None and status != "allowed":
        details = {
            "reason": verdict.reason,
            "policy": verdict.policy,
            "rule": verdict.rule,
            "severity": verdict.severity,
            "behaviour": verdict.behaviour,
        }
        response.update({key: value for key, value in details.items() if value})
        categories = [name for name in (verdict.policy, verdict.rule) if name]
        if categories:
            tracing["violation_categories"] = categories
        if verdict.policy:
            tracing["policy_template"] = verdict.policy
    if failure is not None:
        response.update({"fallback_reason": failure.reason, "error": failure.message})
    guardrail.add_standard_logging_guardrail_information_to_request_data(
        guardrail_json_response=response,
        request_data=data,
        guardrail_status=LITELLM_STATUS[status],
        start_time=started,
        end_time=ended,
        duration=ended - started,
        guardrail_provider="akto",
        event_type=GuardrailEventHooks.during_call if during_call else GuardrailEventHooks.pre_call,
        tracing_detail=tracing,
    )
    if status in PASSED:
        # Imported here: the proxy's module costs 0.3 s to import, which SDK users of the hook never need.
        from litellm.proxy.common_utils.callback_utils import add_guardrail_to_applied_guardrails_header

        add_guardrail_to_applied_guardrails_header(request_data=data, guardrail_name=guardrail.guardrail_name)
