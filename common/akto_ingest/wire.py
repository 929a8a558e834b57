"""Akto's wire format, built here and nowhere else: the mirroring envelope, query flags and verdicts.

See Akto's data-ingestion and guardrails services: every envelope value is a string, the request
body is wrapped as ``{"body": "<json>"}``, and verdict keys change case between Akto versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .config import AktoSettings
from .errors import AktoBadResponse, RecordTooLarge
from .record import Record

MESSAGE_ID_HEADER = "x-akto-installer-akto_message_id"
SESSION_ID_HEADER = "x-akto-installer-akto_session_id"

# Akto's http-proxy rejects a body over about 2 MiB or any string over 256 KiB; ingestData takes
# 10 MiB per call. A record over these can never be accepted, so it is dead-lettered, not sent.
MAX_STRING_BYTES = 256 * 1024
MAX_RECORD_BYTES = 2 * 1024 * 1024
MAX_BATCH_BYTES = 10 * 1024 * 1024

BLOCKING_BEHAVIOURS = frozenset({"block", ""})


def envelope(record: Record, akto: AktoSettings) -> dict[str, str]:
    """The one JSON object Akto ingests for a record (every value a string)."""
    headers = dict(record.request_headers)
    headers[MESSAGE_ID_HEADER] = record.id
    if record.session_id:
        headers[SESSION_ID_HEADER] = record.session_id
    if record.blocked_reason is not None:
        response: dict[str, Any] = {"x-blocked-by": "Akto Guardrails", "reason": record.blocked_reason}
    else:
        response = record.response_body or {}
    status = str(record.status_code)
    body = {
        "path": record.path,
        "method": record.method,
        "requestHeaders": json.dumps(headers),
        "responseHeaders": json.dumps(record.response_headers),
        "requestPayload": json.dumps({"body": json.dumps(record.request_body)}),
        "responsePayload": json.dumps(response),
        "statusCode": status,
        "status": status,
        "time": str(record.created_ms),
        "ip": record.client_ip,
        "destIp": "127.0.0.1",
        "type": "HTTP/1.1",
        "akto_account_id": akto.akto_account_id,
        "akto_vxlan_id": akto.akto_vxlan_id,
        "is_pending": "false",
        "source": "MIRRORING",
        "tag": json.dumps({"gen-ai": "Gen AI"}),
        "metadata": json.dumps(record.metadata),
        "contextSource": akto.context_source,
    }
    if akto.akto_metadata:
        body["akto_metadata"] = json.dumps(akto.akto_metadata)
    return body


def check_size(body: dict[str, str]) -> int:
    """Return the envelope's encoded size; raise :class:`RecordTooLarge` when Akto would refuse it."""
    for key, value in body.items():
        if len(value.encode()) > MAX_STRING_BYTES:
            raise RecordTooLarge(f"field {key} is {len(value.encode())} bytes; Akto accepts {MAX_STRING_BYTES}")
    size = len(json.dumps(body).encode())
    if size > MAX_RECORD_BYTES:
        raise RecordTooLarge(f"record is {size} bytes; Akto accepts {MAX_RECORD_BYTES}")
    return size


def http_proxy_params(*, check_request: bool, check_response: bool, ingest: bool) -> dict[str, str]:
    params = {"akto_connector": "litellm"}
    if check_request:
        params["guardrails"] = "true"
    if check_response:
        params["response_guardrails"] = "true"
    if ingest:
        params["ingest_data"] = "true"
    return params


def batch_body(envelopes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"batchData": envelopes}


@dataclass(frozen=True)
class Verdict:
    """Akto's guardrail answer for one record."""

    allowed: bool
    reason: str
    behaviour: str

    @property
    def blocks(self) -> bool:
        """True only for a block verdict: ``alert`` and ``warn`` are flagged but must pass."""
        return not self.allowed and self.behaviour in BLOCKING_BEHAVIOURS

    @property
    def flagged(self) -> bool:
        return not self.allowed


ALLOW = Verdict(allowed=True, reason="", behaviour="")


def _pick(result: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in result:
            return result[name]
    return None


def parse_verdict(body: Any) -> Verdict:
    """Read a verdict from an http-proxy answer; no ``guardrailsResult`` means allow."""
    if not isinstance(body, dict):
        raise AktoBadResponse(f"expected a JSON object, got {type(body).__name__}")
    data = body.get("data")
    result = data.get("guardrailsResult") if isinstance(data, dict) else None
    if result is None:
        return ALLOW
    if not isinstance(result, dict):
        raise AktoBadResponse("guardrailsResult is not an object")
    allowed = _pick(result, "Allowed", "allowed")
    if allowed is None:
        return ALLOW
    reason = _pick(result, "Reason", "reason") or ""
    behaviour = _pick(result, "behaviour", "Behaviour", "behavior") or ""
    return Verdict(allowed=bool(allowed), reason=str(reason), behaviour=str(behaviour).lower())
