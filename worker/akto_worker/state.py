"""What a worker process holds while it runs; kept in arq's ``ctx`` under ``"akto"``."""

from __future__ import annotations

from dataclasses import dataclass

from akto_ingest.config import WorkerConfig

from .delivery import Deliverer


@dataclass
class WorkerState:
    deliverer: Deliverer
    config: WorkerConfig
    queue_name: str

    @property
    def job_ttl_ms(self) -> int:
        # A job key must outlive the retention period, or arq would expire it before the record
        # could be dead-lettered; one extra day covers the last backoff.
        return (self.config.retention_seconds + 86_400) * 1000
