"""Shared core of akto-litellm-ingest: configuration, the record schema, the queue contract,
Akto's wire format and the Akto HTTP client."""

from .config import AktoSettings, HookSettings, QueueSettings, WorkerConfig
from .errors import (
    AktoBadResponse,
    AktoError,
    AktoHTTPError,
    AktoIngestError,
    AktoUnreachable,
    ConfigError,
    RecordError,
    RecordTooLarge,
)
from .record import SCHEMA_VERSION, Record

__all__ = [
    "SCHEMA_VERSION",
    "AktoBadResponse",
    "AktoError",
    "AktoHTTPError",
    "AktoIngestError",
    "AktoSettings",
    "AktoUnreachable",
    "ConfigError",
    "HookSettings",
    "QueueSettings",
    "Record",
    "RecordError",
    "RecordTooLarge",
    "WorkerConfig",
]
