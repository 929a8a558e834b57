"""``arq akto_worker.WorkerSettings``: the worker's arq settings, from the environment.

Importing this module reads and validates the configuration once, so a bad configuration stops the
worker at start with a message naming the variable. Nothing but arq imports it (through
``akto_worker.WorkerSettings``); the rest of the worker takes its configuration from ``ctx``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from arq import func
from arq.worker import Function

from akto_ingest.connections import arq_redis_settings, worker_pool
from akto_ingest.queue import DEAD_LETTER_FUNCTION, DELIVER_FUNCTION, decode_job, encode_job

from . import lifecycle
from .claims import survive_connection_drops
from .deadline import job_limits
from .jobs import dead_letter_job, deliver
from .stopping import bound_close

config = lifecycle.Config.load()

# arq cancels a job at its timeout and treats that as terminal, so each job's own deadline stays
# well inside it (deadline.py derives both from AKTO_DELIVERY_TIMEOUT). Every job limit below uses it.
limits = job_limits(config.worker.delivery_timeout)
JOB_TIMEOUT_SECONDS = limits.job_timeout
# arq's claim can die on a dropped Redis connection; patched once, before arq builds its Worker.
survive_connection_drops()
# arq's close retries Redis for minutes when it is gone; bounded so a stop ends within the grace period.
bound_close()


async def startup(ctx: dict[str, Any]) -> None:
    await lifecycle.startup(ctx, config)


class WorkerSettings:
    """The settings arq's ``Worker`` is built from."""

    functions: ClassVar[list[Function]] = [
        func(deliver, name=DELIVER_FUNCTION, timeout=JOB_TIMEOUT_SECONDS),
        func(dead_letter_job, name=DEAD_LETTER_FUNCTION, timeout=JOB_TIMEOUT_SECONDS),
    ]
    job_timeout = JOB_TIMEOUT_SECONDS
    job_completion_wait = limits.stop_wait
    queue_name = config.queue.queue_name
    redis_pool = worker_pool(
        config.queue.redis_url,
        config.queue.queue_name,
        config.queue.redis_timeout,
        job_serializer=encode_job,
        job_deserializer=decode_job,
    )
    # arq's own `arq --check` health check connects with these; the worker itself uses redis_pool.
    redis_settings = arq_redis_settings(config.queue.redis_url)
    max_jobs = lifecycle.max_jobs(config.worker)
    # Retries are ours (new deferred jobs); arq's own counter only guards crash loops.
    max_tries = 1_000_000
    keep_result = 0
    poll_delay = 0.05
    job_serializer = encode_job
    job_deserializer = decode_job
    retry_jobs = True
    health_check_interval = 10
    on_startup = startup
    on_shutdown = lifecycle.shutdown
