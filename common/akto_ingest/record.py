"""The record schema: one request/response exchange, as the hook captures it and the worker delivers it.

A record is the unit of durability. It is credential-free by construction: the header validator
drops every credential header before a record can exist, so nothing downstream (queue, spool, dead
letters, Akto) can ever hold one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, Literal

import orjson
from prometheus_client import Counter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from . import jsonvalue
from .errors import RecordError

SCHEMA_VERSION = 1

log = logging.getLogger("akto_ingest")

TEXT_REPAIRED = Counter(
    "akto_text_repaired",
    "Records orjson could not encode as they were and that were repaired: U+FFFD for each lone surrogate, "
    "values past the limits of jsonvalue.py as their text",
)

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


def encodable(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A record's fields as plain JSON data that always encodes: each value brought within the limits
    of ``jsonvalue.py``, with every lone surrogate as U+FFFD (a valid pair is joined into its
    character). A bounded walk: no depth or width can make it raise."""
    return {jsonvalue.repair_text(str(key)): jsonvalue.bounded(value, text=True) for key, value in fields.items()}


def _count_repair(call_id: str) -> None:
    TEXT_REPAIRED.inc()
    log.warning(
        "akto record text repaired call_id=%s: characters that cannot be encoded replaced by U+FFFD, "
        "values past the JSON limits carried as text",
        call_id,
    )


# orjson takes only what it writes exactly as pydantic does (str, int, float, bool, None, dict with str
# keys, list, tuple); anything else raises, and pydantic's serialiser handles the record instead.
_PLAIN_JSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


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
    # Akto's Metadata for the verdict that blocked the request (policy_name, rule_violated, severity).
    # Optional fields added later keep ``v`` at 1: an older record reads with them unset, and an older
    # worker ignores them. ``v`` changes only for a change an older reader would get wrong.
    blocked_policy: str | None = None
    blocked_rule: str | None = None
    blocked_severity: str | None = None
    # Set by a dead-letter replay (dlq.py): the retention period starts again from here.
    replayed_ms: int | None = None

    _clean_request_headers = field_validator("request_headers", mode="before")(strip_credentials)

    @field_validator("session_id", mode="before")
    @classmethod
    def _session_as_text(cls, value: Any) -> str | None:
        return None if value is None or value == "" else str(value)

    _clean_response_headers = field_validator("response_headers", mode="before")(strip_credentials)

    @model_validator(mode="wrap")
    @classmethod
    def _repair_text(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Record:
        # pydantic refuses a lone surrogate in a str field; the record is kept, with U+FFFD there.
        try:
            record: Record = handler(data)
        except ValidationError as exc:
            if not (isinstance(data, Mapping) and any(error["type"] == "string_unicode" for error in exc.errors())):
                raise
            record = handler(encodable(data))
            _count_repair(record.id)
        return record

    @property
    def retained_from_ms(self) -> int:
        """When this record's retention period started: its capture, or its last replay."""
        return max(self.created_ms, self.replayed_ms or 0)

    def to_json(self) -> str:
        """The record as queued. Never raises: text JSON cannot hold is repaired (see :meth:`repaired`)."""
        fields = {k: v for k, v in self.__dict__.items() if v is not None}
        try:
            # The same bytes as model_dump_json(exclude_none=True) in half the CPU, on the
            # proxy's event loop once per request; fields are in declaration order either way.
            return orjson.dumps(fields, option=_PLAIN_JSON).decode()
        except TypeError:
            pass
        # The slow path runs only for the rare record orjson refuses: text JSON cannot hold, values past
        # the limits of jsonvalue.py, or types that are not plain JSON. Those types are written as
        # pydantic writes them (a datetime in ISO 8601), then everything is brought within the
        # limits, which always encodes.
        _count_repair(self.id)
        # Deeper than pydantic's serializer goes: the fields as they are.
        with contextlib.suppress(ValueError):
            fields = self.model_dump(mode="json", exclude_none=True)
        return orjson.dumps(encodable(fields)).decode()

    def repaired(self) -> Record:
        """A copy whose text can always be encoded, with every lone surrogate replaced by U+FFFD and
        values JSON has no form for replaced by their text; logged and counted in ``TEXT_REPAIRED``."""
        fixed = Record.model_validate(encodable(self.__dict__))
        _count_repair(fixed.id)
        return fixed

    @classmethod
    def from_json(cls, raw: str | bytes) -> Record:
        """Decode a queued record; raises :class:`RecordError` naming what is wrong.

        pydantic's JSON parser reads all but the deepest records, and reads them fastest. It stops at
        201 levels: such a record is read with orjson (up to 1,024, so anything orjson wrote) and its
        bodies are brought within the limits of ``jsonvalue.py``."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            if "recursion limit" not in first["msg"]:
                raise RecordError(_problem(first)) from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RecordError(f"not a valid record (record: Invalid JSON: {exc})") from None
        if not isinstance(data, dict):
            raise RecordError(f"not a valid record (record: Input should be an object, not {type(data).__name__})")
        for name in ("request_body", "response_body"):
            if isinstance(data.get(name), dict):
                data[name] = jsonvalue.bounded(data[name])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RecordError(_problem(exc.errors()[0])) from None


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "record"
    return f"not a valid record ({where}: {error['msg']})"
