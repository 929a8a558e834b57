"""The record schema: one request/response exchange, as the hook captures it and the worker delivers it.

A record is the unit of durability. It is credential-free by construction: the header validator
drops every credential header before a record can exist, so nothing downstream (queue, spool, dead
letters, Akto) can ever hold one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import RecordError

SCHEMA_VERSION = 1

CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-litellm-api-key",
        "x-goog-api-key",
        "anthropic-api-key",
        "openai-api-key",
        "x-amz-security-token",
    }
)


def strip_credentials(headers: Any) -> dict[str, str]:
    """Lower-case header names and drop every header that can carry a credential."""
    if not isinstance(headers, Mapping):
        raise ValueError("headers must be an object")
    clean: dict[str, str] = {}
    for name, value in headers.items():
        key = str(name).lower()
        if key in CREDENTIAL_HEADERS or key.endswith(("-api-key", "-token", "-secret")):
            continue
        clean[key] = str(value)
    return clean


def now_ms() -> int:
    return int(time.time() * 1000)


class Record(BaseModel):
    """One LLM exchange to deliver to Akto.

    ``v`` lets a newer hook and an older worker (or the reverse) share a queue: unknown fields are
    ignored, and a record that a worker cannot read goes to the dead-letter store for replay after
    the worker is upgraded.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int = SCHEMA_VERSION
    id: str = Field(min_length=1, description="LiteLLM's call id, sent to Akto as the message id")
    mode: Literal["block", "monitor"] = Field(
        description="block: ingest only (checked inline already); monitor: ask Akto for a verdict too"
    )
    created_ms: int = Field(default_factory=now_ms)
    path: str = "/v1/chat/completions"
    method: str = "POST"
    request_headers: dict[str, str] = Field(default_factory=dict)
    request_body: dict[str, Any] = Field(default_factory=dict)
    response_headers: dict[str, str] = Field(default_factory=lambda: {"content-type": "application/json"})
    response_body: dict[str, Any] | None = None
    status_code: int = 200
    client_ip: str = "127.0.0.1"
    session_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    blocked_reason: str | None = None

    _clean_request_headers = field_validator("request_headers", mode="before")(strip_credentials)

    @field_validator("session_id", mode="before")
    @classmethod
    def _session_as_text(cls, value: Any) -> str | None:
        return None if value is None or value == "" else str(value)

    _clean_response_headers = field_validator("response_headers", mode="before")(strip_credentials)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Record:
        """Decode a queued record; raises :class:`RecordError` naming what is wrong."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "record"
            raise RecordError(f"not a valid record ({where}: {first['msg']})") from None
