"""The worker's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from akto_ingest.violations import PolicyLabels, Violation, severity_label

DELIVERED = Counter("akto_worker_records_delivered", "Records Akto accepted")
RETRIED = Counter("akto_worker_records_retried", "Records scheduled for another try")
DEAD_LETTERED = Counter("akto_worker_records_dead_lettered", "Records moved to the dead-letter store", ["reason"])
# policy is bounded (violations.PolicyLabels): the names come from Akto's configuration.
VIOLATIONS = Counter("akto_worker_violations", "Monitor-mode records Akto flagged", ["severity", "policy"])
AKTO_LATENCY = Histogram(
    "akto_worker_akto_request_seconds",
    "Time of one Akto request",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BACKLOG = Gauge("akto_worker_queue_backlog", "Jobs or records waiting, by state", ["state"])

_policy_label = PolicyLabels()


def count_violation(violation: Violation) -> None:
    VIOLATIONS.labels(severity_label(violation.severity), _policy_label(violation.policy)).inc()
