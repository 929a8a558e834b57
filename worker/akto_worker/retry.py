"""Retry policy: which failures are worth retrying, and how long to wait before the next try."""

from __future__ import annotations

import random

from akto_ingest.errors import AktoBadResponse, AktoError, AktoHTTPError, AktoUnreachable

RETRYABLE_STATUSES = frozenset({408, 429})


def is_retryable(exc: AktoError) -> bool:
    """Connection failures, timeouts, 408, 429 and 5xx may pass; other 4xx never will."""
    if isinstance(exc, AktoUnreachable | AktoBadResponse):
        return True
    if isinstance(exc, AktoHTTPError):
        return exc.status in RETRYABLE_STATUSES or exc.status >= 500
    return False


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Capped exponential backoff with jitter: uniform in [half, full] of ``min(cap, base * 2**attempt)``.

    Half the delay is kept fixed so a fleet of workers cannot all retry at once after an outage,
    yet never retries sooner than half the intended wait.
    """
    ceiling = min(cap, base * 2 ** min(attempt, 32))
    return random.uniform(ceiling / 2, ceiling)
