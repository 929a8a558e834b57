"""The hook's Prometheus metrics. They live in prometheus_client's default registry, which is the one
LiteLLM's own ``/metrics`` endpoint serves, so they appear beside LiteLLM's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ENQUEUED = Counter("akto_hook_records_enqueued", "Records written to the Redis queue")
ENQUEUE_FAILURES = Counter("akto_hook_enqueue_failures", "Record writes to Redis that failed or timed out")
SPOOLED = Counter("akto_hook_records_spooled", "Records written to the local spool while Redis was unavailable")
CHECK_SECONDS = Histogram(
    "akto_hook_check_seconds",
    "Time of the inline Akto check (block mode)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SPOOL_DROPPED = Counter("akto_hook_spool_dropped", "Records dropped because the local spool was full")
CAPTURE_FAILURES = Counter("akto_hook_capture_failures", "Calls whose record could not be built (a bug: see the log)")
BLOCKED = Counter("akto_hook_blocked", "Requests blocked by an Akto verdict")
# reason: unreachable, http_error, unreadable_body, akto_fail_open (Akto's gateway answered failOpen),
# too_large, internal_error (the check could not be built).
FALLBACK = Counter("akto_hook_fallback", "Requests decided by unreachable_fallback", ["decision", "reason"])
