"""One deadline per job, derived from ``AKTO_DELIVERY_TIMEOUT``, and arq's job timeout derived from it.

arq treats a job that reaches its timeout as failed for good and deletes it, records and all. So a
``deliver`` job never gets there: it stops delivering at its delivery deadline (what is not delivered
by then goes to the retry job), stops waiting for Redis at its persist deadline (then it ends with
arq's ``Retry``, which keeps the job), and arq's timeout sits a margin beyond both. Every figure
follows from the delivery timeout, so no setting can put the job timeout inside the job's own work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from akto_ingest.errors import ConfigError

# A job may use this many delivery timeouts in a row (a batch-mode chunk, then its per-record
# fallback, then the next chunk) before the rest of its records wait for the retry job.
TIMEOUTS_PER_JOB = 3
MIN_DELIVERY_SECONDS = 10.0
# Storing retries and dead letters is a few milliseconds; this much covers a Redis failover.
PERSIST_SECONDS = 10.0
# Event-loop lag and arq's own bookkeeping between its timer starting and our job starting.
MARGIN_SECONDS = 5.0
# The longest delivery timeout allowed: a killed worker's jobs only run again after arq's
# in-progress key expires (job timeout + 10 s), so a larger one would strand them for too long.
MAX_DELIVERY_TIMEOUT = 300.0
# How long a stopping worker lets running jobs finish before arq cancels and re-queues them.
MAX_STOP_WAIT_SECONDS = 45


@dataclass(frozen=True)
class JobLimits:
    """The time a ``deliver`` job may spend on each part of its work, in seconds from its start."""

    delivery_seconds: float
    persist_seconds: float
    job_timeout: int

    @property
    def stop_wait(self) -> int:
        """arq's ``job_completion_wait``: longer jobs are cancelled and re-queued whole at a stop."""
        return min(self.job_timeout, MAX_STOP_WAIT_SECONDS)


def job_limits(delivery_timeout: float) -> JobLimits:
    """The job's budgets and arq's timeout for a delivery timeout; raises :class:`ConfigError` when
    ``AKTO_DELIVERY_TIMEOUT`` is out of range."""
    if not 0 < delivery_timeout <= MAX_DELIVERY_TIMEOUT:
        raise ConfigError(
            f"AKTO_DELIVERY_TIMEOUT={delivery_timeout:g} is out of range: it must be over 0 and at most "
            f"{MAX_DELIVERY_TIMEOUT:g} seconds (a job may spend {TIMEOUTS_PER_JOB} of them, and a killed "
            "worker's jobs wait for the job timeout before they run again)"
        )
    delivery = max(MIN_DELIVERY_SECONDS, TIMEOUTS_PER_JOB * delivery_timeout)
    timeout = math.ceil(delivery + PERSIST_SECONDS + MARGIN_SECONDS)
    return JobLimits(delivery_seconds=delivery, persist_seconds=PERSIST_SECONDS, job_timeout=timeout)
