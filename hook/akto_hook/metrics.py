"""The hook's Prometheus metrics. They live in prometheus_client's default registry, which is the one
LiteLLM's own ``/metrics`` endpoint serves, so they appear beside LiteLLM's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from akto_ingest.violations import PolicyLabels, severity_label
from akto_ingest.wire import Verdict

ENQUEUED = Counter("akto_hook_records_enqueued", "Records written to the Redis queue")
ENQUEUE_FAILURES = Counter("akto_hook_enqueue_failures", "Record writes to Redis that failed or timed out")
SPOOLED = Counter("akto_hook_records_spooled", "Records written to the local spool while Redis was unavailable")
CHECK_SECONDS = Histogram(
    "akto_hook_check_seconds",
    "Time of the inline Akto check (block mode)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SPOOL_DROPPED = Counter(
    "akto_hook_spool_dropped", "Records dropped: the local spool and the memory hold behind it could not take them"
)
BREAKER_OPEN = Gauge("akto_hook_breaker_open", "1 while Redis is treated as unavailable and records go to the spool")
TASK_FAILURES = Counter(
    "akto_hook_task_failures", "Errors in the hook's background tasks (logged; the task carries on)", ["task"]
)
CAPTURE_FAILURES = Counter("akto_hook_capture_failures", "Calls whose record could not be built (a bug: see the log)")
BLOCKED = Counter("akto_hook_blocked", "Requests blocked by an Akto verdict")
# reason: unreachable, http_error, unreadable_body, akto_fail_open (Akto's gateway answered failOpen),
# too_large, unreadable_request (a value the guardrail cannot read), internal_error (the check could
# not be built).
FALLBACK = Counter("akto_hook_fallback", "Requests decided by unreachable_fallback", ["decision", "reason"])
# action: blocked, or flagged (an alert or warn verdict, which passes). policy is bounded
# (violations.PolicyLabels): the names come from Akto's configuration.
VIOLATIONS = Counter(
    "akto_hook_violations",
    "Requests the inline check found violating an Akto policy",
    ["action", "severity", "policy"],
)

_policy_label = PolicyLabels()


def count_violation(action: str, verdict: Verdict) -> None:
    VIOLATIONS.labels(action, severity_label(verdict.severity), _policy_label(verdict.policy)).inc()


# side: request (what the LLM gets) or response (what the client gets, check_response).
MASKED = Counter("akto_hook_masked", "Requests and responses Akto masked and the hook applied the mask to", ["side"])
