"""The record schema and Akto's wire format: credential stripping, the envelope, verdicts and sizes."""

from __future__ import annotations

import json
from functools import partial

import pytest

from akto_ingest.config import AktoSettings
from akto_ingest.errors import AktoBadResponse, RecordError, RecordTooLarge
from akto_ingest.record import SCHEMA_VERSION, Record, strip_credentials
from akto_ingest.wire import (
    INGEST_DATA_LIMITS,
    MAX_RECORD_BYTES,
    MAX_STRING_BYTES,
    MESSAGE_ID_HEADER,
    SESSION_ID_HEADER,
    check_size,
    encode,
    envelope,
    http_proxy_params,
    parse_verdict,
    too_large,
)

AKTO = AktoSettings.load({"akto_base_url": "http://akto:9090", "akto_api_key": "k"}, env={})

CREDENTIALS = {
    "Authorization": "Bearer SECRET-litellm-master",
    "Cookie": "session=SECRET-cookie",
    "X-API-Key": "SECRET-x-api-key",
    "Proxy-Authorization": "Basic SECRET-proxy",
    "x-litellm-api-key": "SECRET-litellm-key",
    "Anthropic-Api-Key": "SECRET-anthropic",
    "my-vendor-api-key": "SECRET-vendor",
    "set-cookie": "SECRET-set-cookie",
    "api-key": "SECRET-azure",
    "x-goog-api-key": "SECRET-goog",
    "X-Amz-Security-Token": "SECRET-amz",
}
SAFE = {"Content-Type": "application/json", "User-Agent": "curl/8", "X-Request-Id": "r-1"}


# The wire module writes compact JSON (orjson); expected values are built the same way.
compact = partial(json.dumps, separators=(",", ":"), ensure_ascii=False)


def make(**fields: object) -> Record:
    values: dict[str, object] = {
        "id": "chatcmpl-call-1",
        "mode": "block",
        "created_ms": 1_700_000_000_123,
        "request_headers": {**CREDENTIALS, **SAFE},
        "request_body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]},
        "response_body": {"choices": [{"message": {"role": "assistant", "content": "Hi"}}]},
        "client_ip": "10.1.2.3",
        "metadata": {"user_id": "u-1"},
    }
    values.update(fields)
    return Record(**values)  # type: ignore[arg-type]


# -- credentials ---------------------------------------------------------------------------------


def test_strip_credentials_keeps_only_safe_headers_lower_cased() -> None:
    assert strip_credentials({**CREDENTIALS, **SAFE}) == {
        "content-type": "application/json",
        "user-agent": "curl/8",
        "x-request-id": "r-1",
    }


def test_record_never_holds_credential_headers_in_either_direction() -> None:
    record = make(response_headers={"Set-Cookie": "s=1", "Content-Type": "application/json"})
    assert record.request_headers == {
        "content-type": "application/json",
        "user-agent": "curl/8",
        "x-request-id": "r-1",
    }
    assert record.response_headers == {"content-type": "application/json"}
    # Decoding a queued record strips them too: the validator runs on every construction path.
    raw = json.dumps({"id": "a", "mode": "block", "request_headers": CREDENTIALS})
    assert Record.from_json(raw).request_headers == {}


def test_no_credential_value_reaches_the_envelope() -> None:
    text = json.dumps(envelope(make(), AKTO))
    for name, value in CREDENTIALS.items():
        assert value not in text, name
        assert name.lower() not in text.lower(), name
    headers = json.loads(envelope(make(), AKTO)["requestHeaders"])
    assert headers == {
        "content-type": "application/json",
        "user-agent": "curl/8",
        "x-request-id": "r-1",
        MESSAGE_ID_HEADER: "chatcmpl-call-1",
    }


# -- envelope ------------------------------------------------------------------------------------


def test_envelope_matches_the_reference_field_by_field() -> None:
    record = make()
    body = envelope(record, AKTO)
    assert all(isinstance(v, str) for v in body.values()), body
    expected_payload = {"body": compact({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]})}
    assert body == {
        "path": "/v1/chat/completions",
        "method": "POST",
        # Credentials stripped, names lower-cased, the call id added as Akto's message id.
        "requestHeaders": (
            '{"content-type":"application/json","user-agent":"curl/8","x-request-id":"r-1",'
            '"x-akto-installer-akto_message_id":"chatcmpl-call-1"}'
        ),
        "responseHeaders": compact({"content-type": "application/json"}),
        "requestPayload": compact(expected_payload),
        "responsePayload": compact({"choices": [{"message": {"role": "assistant", "content": "Hi"}}]}),
        "statusCode": "200",
        "status": "200",
        "time": "1700000000123",
        "ip": "10.1.2.3",
        "destIp": "127.0.0.1",
        "type": "HTTP/1.1",
        "akto_account_id": "1000000",
        "akto_vxlan_id": "0",
        "is_pending": "false",
        "source": "MIRRORING",
        "tag": compact({"gen-ai": "Gen AI"}),
        "metadata": compact({"user_id": "u-1"}),
        "contextSource": "AGENTIC",
    }
    # requestPayload is {"body": "<JSON string>"} and the inner string decodes to the request.
    inner = json.loads(json.loads(body["requestPayload"])["body"])
    assert inner["messages"][0]["content"] == "Hello"
    assert json.loads(body["requestHeaders"])[MESSAGE_ID_HEADER] == "chatcmpl-call-1"


def test_envelope_time_is_epoch_milliseconds() -> None:
    record = Record(id="x", mode="monitor")
    stamp = int(envelope(record, AKTO)["time"])
    assert stamp == record.created_ms
    assert 1_600_000_000_000 < stamp < 10_000_000_000_000  # ms, not seconds


def test_envelope_session_header_account_ids_and_akto_metadata() -> None:
    akto = AktoSettings.load(
        {
            "akto_base_url": "http://a",
            "akto_api_key": "k",
            "akto_account_id": 42,
            "akto_vxlan_id": "7",
            "context_source": "ENDPOINT",
            "akto_metadata": {"policy_name": "p1"},
        },
        env={},
    )
    body = envelope(make(session_id="sess-9"), akto)
    assert json.loads(body["requestHeaders"])[SESSION_ID_HEADER] == "sess-9"
    assert body["akto_account_id"] == "42"
    assert body["akto_vxlan_id"] == "7"
    assert body["contextSource"] == "ENDPOINT"
    assert body["akto_metadata"] == compact({"policy_name": "p1"})
    assert "akto_metadata" not in envelope(make(), AKTO)
    assert SESSION_ID_HEADER not in json.loads(envelope(make(), AKTO)["requestHeaders"])


def test_blocked_record_has_blocked_by_and_reason_in_response() -> None:
    record = make(status_code=400, blocked_reason="Prompt injection detected")
    body = envelope(record, AKTO)
    assert json.loads(body["responsePayload"]) == {
        "x-blocked-by": "Akto Guardrails",
        "reason": "Prompt injection detected",
    }
    assert body["statusCode"] == "400"
    assert body["status"] == "400"


def test_blocked_record_carries_akto_policy_rule_and_severity_under_akto_names() -> None:
    record = make(
        status_code=400,
        blocked_reason="PII detected",
        blocked_policy="PII",
        blocked_rule="email",
        blocked_severity="medium",
    )
    assert json.loads(envelope(record, AKTO)["responsePayload"]) == {
        "x-blocked-by": "Akto Guardrails",
        "reason": "PII detected",
        "policy_name": "PII",
        "rule_violated": "email",
        "severity": "medium",
    }
    # Only the details Akto gave.
    partial = make(status_code=400, blocked_reason="PII detected", blocked_policy="PII")
    assert set(json.loads(envelope(partial, AKTO)["responsePayload"])) == {"x-blocked-by", "reason", "policy_name"}


def test_a_record_written_before_the_verdict_details_still_reads() -> None:
    old = {"v": 1, "id": "a", "mode": "block", "status_code": 400, "blocked_reason": "Prompt injection detected"}
    record = Record.from_json(json.dumps(old))
    assert (record.blocked_policy, record.blocked_rule, record.blocked_severity) == (None, None, None)
    assert "policy_name" not in envelope(record, AKTO)["responsePayload"]


def test_no_response_body_is_empty_object() -> None:
    body = envelope(make(response_body=None), AKTO)
    assert body["responsePayload"] == "{}"
    assert body["requestPayload"] != ""


def test_http_proxy_params() -> None:
    assert http_proxy_params(check_request=True, check_response=True, ingest=True) == {
        "akto_connector": "litellm",
        "guardrails": "true",
        "response_guardrails": "true",
        "ingest_data": "true",
    }
    assert http_proxy_params(check_request=False, check_response=False, ingest=True) == {
        "akto_connector": "litellm",
        "ingest_data": "true",
    }
    assert http_proxy_params(check_request=True, check_response=False, ingest=False) == {
        "akto_connector": "litellm",
        "guardrails": "true",
    }


# -- verdicts ------------------------------------------------------------------------------------


def answer(result: object) -> dict[str, object]:
    return {"success": True, "message": "ok", "data": {"success": True, "guardrailsResult": result}}


@pytest.mark.parametrize(
    "result",
    [
        {"Allowed": False, "Reason": "Prompt injection detected", "behaviour": "block"},
        {"allowed": False, "reason": "Prompt injection detected", "Behaviour": "block"},
        {"allowed": False, "Reason": "Prompt injection detected", "behaviour": "BLOCK"},
    ],
)
def test_verdict_reads_both_key_casings(result: dict[str, object]) -> None:
    verdict = parse_verdict(answer(result))
    assert verdict.allowed is False
    assert verdict.reason == "Prompt injection detected"
    assert verdict.behaviour == "block"
    assert verdict.blocks is True
    assert verdict.flagged is True


@pytest.mark.parametrize(
    "body",
    [
        {"success": True, "message": "Request processed successfully", "data": {"success": True}},
        {"success": True},
        {"success": True, "data": None},
        answer(None),
    ],
)
def test_missing_guardrails_result_means_allow(body: dict[str, object]) -> None:
    verdict = parse_verdict(body)
    assert verdict.allowed is True
    assert verdict.blocks is False
    assert verdict.flagged is False


def test_allowed_verdict_with_fail_open() -> None:
    verdict = parse_verdict(answer({"Allowed": True, "Reason": "", "failOpen": True}))
    assert (verdict.allowed, verdict.blocks, verdict.flagged) == (True, False, False)


@pytest.mark.parametrize("behaviour", ["alert", "warn", "approval", "Alert", "WARN", "Approval"])
def test_alert_warn_and_approval_are_flagged_but_do_not_block(behaviour: str) -> None:
    verdict = parse_verdict(answer({"Allowed": False, "Reason": "PII detected", "behaviour": behaviour}))
    assert verdict.flagged is True
    assert verdict.blocks is False
    assert verdict.behaviour == behaviour.lower()
    assert verdict.reason == "PII detected"


@pytest.mark.parametrize("result", [{"Allowed": False, "behaviour": ""}, {"Allowed": False}])
def test_empty_or_missing_behaviour_blocks(result: dict[str, object]) -> None:
    verdict = parse_verdict(answer(result))
    assert verdict.blocks is True
    assert verdict.reason == ""


@pytest.mark.parametrize(
    "result",
    [
        {"Allowed": None, "Reason": "Prompt injection detected", "behaviour": "block"},
        {"Reason": "Prompt injection detected", "behaviour": "block"},
        {"allowed": None, "Modified": False},
        {"Reason": "", "Modified": False},
        {},
    ],
)
def test_a_verdict_without_allowed_is_a_bad_response_not_an_allow(result: dict[str, object]) -> None:
    # Akto sends Allowed in every verdict, its fail-open one included: one without it says nothing.
    with pytest.raises(AktoBadResponse, match="no Allowed"):
        parse_verdict(answer(result))


@pytest.mark.parametrize(
    "result",
    [
        {"Allowed": True, "allowed": False, "behaviour": "block"},
        {"Allowed": False, "allowed": True, "behaviour": "block"},
        {"Allowed": True, "allowed": True, "failOpen": True, "fail_open": False},
    ],
)
def test_two_casings_of_a_flag_that_disagree_are_a_bad_response(result: dict[str, object]) -> None:
    with pytest.raises(AktoBadResponse, match="both true and false"):
        parse_verdict(answer(result))


def test_a_null_in_one_casing_leaves_the_other() -> None:
    # Akto's fail-open verdict sends both casings of each key; a null stands for one not sent.
    verdict = parse_verdict(
        answer(
            {
                "Allowed": None,
                "allowed": False,
                "Reason": None,
                "reason": "PII detected",
                "behaviour": None,
                "Behaviour": "warn",
            }
        )
    )
    assert (verdict.allowed, verdict.reason, verdict.behaviour, verdict.blocks) == (
        False,
        "PII detected",
        "warn",
        False,
    )


@pytest.mark.parametrize(
    ("behaviour", "blocks"),
    [("Block ", True), (" BLOCK", True), ("\tblock\n", True), ("  ", True), (" Alert ", False), ("WARN ", False)],
)
def test_behaviour_is_read_without_case_or_surrounding_spaces(behaviour: str, blocks: bool) -> None:
    verdict = parse_verdict(answer({"Allowed": False, "Reason": "Prompt injection detected", "behaviour": behaviour}))
    assert verdict.behaviour == behaviour.strip().lower()
    assert verdict.blocks is blocks
    assert verdict.flagged is True


@pytest.mark.parametrize("body", [[], "ok", 3, None, [{"data": {}}]])
def test_non_object_answer_is_a_bad_response(body: object) -> None:
    with pytest.raises(AktoBadResponse, match="expected a JSON object"):
        parse_verdict(body)


def test_non_object_guardrails_result_is_a_bad_response() -> None:
    with pytest.raises(AktoBadResponse, match="guardrailsResult"):
        parse_verdict(answer("blocked"))


@pytest.mark.parametrize(
    "result",
    [
        {"Allowed": "false", "Reason": "Prompt injection detected", "behaviour": "block"},
        {"Allowed": 0, "Reason": "Prompt injection detected"},
        # 1 == True in Python: a set of the two casings must not merge them into a boolean.
        {"Allowed": True, "allowed": 1, "Reason": ""},
        {"Allowed": True, "Modified": "true", "ModifiedPayload": '{"body": "{}"}'},
        {"Allowed": True, "failOpen": "true", "error": "guardrail engine timed out"},
    ],
)
def test_a_verdict_flag_that_is_not_a_boolean_is_a_bad_response(result: dict[str, object]) -> None:
    # Read for its truth, the string "false" would allow what Akto refused.
    with pytest.raises(AktoBadResponse, match="not a boolean"):
        parse_verdict(answer(result))


@pytest.mark.parametrize("payload", ["", None, {"body": "{}"}, 7])
def test_a_mask_whose_payload_cannot_be_read_is_kept_as_an_empty_mask(payload: object) -> None:
    # An empty payload is a mask that cannot be applied (the request is refused), not no mask at all.
    verdict = parse_verdict(answer({"Allowed": True, "Modified": True, "ModifiedPayload": payload}))
    assert verdict.modified_payload == ""


# -- sizes ---------------------------------------------------------------------------------------


def test_check_size_returns_the_encoded_size() -> None:
    body = envelope(make(), AKTO)
    assert check_size(body) == len(compact(body).encode())


def test_check_size_rejects_a_300_kib_string() -> None:
    record = make(request_body={"model": "m", "messages": [{"role": "user", "content": "a" * 300 * 1024}]})
    with pytest.raises(
        RecordTooLarge, match=r"field requestPayload is \d+ bytes; Akto's /api/http-proxy accepts 262144"
    ):
        check_size(envelope(record, AKTO))
    # ingestData takes it.
    assert encode(envelope(record, AKTO), INGEST_DATA_LIMITS) == compact(envelope(record, AKTO)).encode()


def test_check_size_counts_bytes_not_characters() -> None:
    body = {"path": "é" * (MAX_STRING_BYTES // 2 + 1)}  # fewer characters than the limit, more bytes
    with pytest.raises(RecordTooLarge, match="field path"):
        check_size(body)


def test_check_size_accepts_a_string_right_at_the_limit() -> None:
    body = {"path": "a" * MAX_STRING_BYTES}
    assert check_size(body) == MAX_STRING_BYTES + len('{"path":""}')


def test_check_size_rejects_a_3_mib_record_of_small_strings() -> None:
    body = {f"f{i}": "b" * 200 * 1024 for i in range(16)}  # each string fine, 3.1 MiB in total
    with pytest.raises(
        RecordTooLarge, match=f"record is \\d+ bytes; Akto's /api/http-proxy accepts {MAX_RECORD_BYTES}"
    ):
        check_size(body)
    assert isinstance(RecordTooLarge("x"), RecordError)
    assert too_large(body, encode(body, INGEST_DATA_LIMITS), INGEST_DATA_LIMITS) == ""


def test_ingest_data_limits_are_5_mib_a_string_and_10_mib_a_body() -> None:
    assert (INGEST_DATA_LIMITS.max_string_bytes, INGEST_DATA_LIMITS.max_body_bytes) == (5 * 1024**2, 10 * 1024**2)
    at_limit = {"path": "a" * INGEST_DATA_LIMITS.max_string_bytes}
    assert len(encode(at_limit, INGEST_DATA_LIMITS)) == INGEST_DATA_LIMITS.max_string_bytes + len('{"path":""}')
    with pytest.raises(RecordTooLarge, match="field path is 5242881 bytes; Akto's /api/ingestData accepts 5242880"):
        encode({"path": "a" * (INGEST_DATA_LIMITS.max_string_bytes + 1)}, INGEST_DATA_LIMITS)


def test_ingest_data_body_limit_counts_the_batch_wrapper_and_publish_flag() -> None:
    # One record alone in a batch, with the publish flag: {"batchData":[{...,"publishToGuardrails":true}]}
    wrapper = len('{"batchData":[') + len("]}") + len(',"publishToGuardrails":true')
    strings = 3
    filler = (INGEST_DATA_LIMITS.max_body_bytes - wrapper - len(compact({f"f{i}": "" for i in range(strings)}))) // 3

    def body(extra: int) -> dict[str, str]:
        values = {f"f{i}": "b" * filler for i in range(strings)}
        values["f0"] += "b" * extra
        return values

    fits = body(INGEST_DATA_LIMITS.max_body_bytes - wrapper - len(compact(body(0))))
    assert len(compact(fits)) + wrapper == INGEST_DATA_LIMITS.max_body_bytes
    assert too_large(fits, compact(fits).encode(), INGEST_DATA_LIMITS) == ""
    over = body(INGEST_DATA_LIMITS.max_body_bytes - wrapper - len(compact(body(0))) + 1)
    with pytest.raises(RecordTooLarge, match="record is 10485761 bytes; Akto's /api/ingestData accepts 10485760"):
        encode(over, INGEST_DATA_LIMITS)


# -- record decoding -------------------------------------------------------------------------------


def test_record_json_round_trip_omits_none() -> None:
    record = make(session_id=None, blocked_reason=None)
    raw = record.to_json()
    assert "session_id" not in json.loads(raw)
    assert "blocked_reason" not in json.loads(raw)
    assert Record.from_json(raw) == record
    assert Record.from_json(raw.encode()) == record
    assert json.loads(raw)["v"] == SCHEMA_VERSION


def test_unknown_fields_from_a_newer_hook_are_ignored() -> None:
    record = Record.from_json(json.dumps({"v": 2, "id": "a", "mode": "monitor", "new_field": [1]}))
    assert (record.v, record.id, record.mode) == (2, "a", "monitor")


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ('{"mode": "block"}', "id: Field required"),
        ('{"id": "", "mode": "block"}', "id: String should have at least 1 character"),
        ('{"id": "a"}', "mode: Field required"),
        ('{"id": "a", "mode": "observe"}', "mode: Input should be 'block' or 'monitor'"),
        ('{"id": "a", "mode": "block", "status_code": "abc"}', "status_code: "),
        ('{"id": "a", "mode": "block", "request_body": [1]}', "request_body: "),
        ('{"id": "a", "mode": "block", "metadata": {"k": [1]}}', "metadata.k: "),
        ("[1, 2]", "record: Input should be an object"),
        ("not json", "record: Invalid JSON"),
    ],
)
def test_from_json_errors_name_the_field(raw: str, where: str) -> None:
    with pytest.raises(RecordError) as info:
        Record.from_json(raw)
    assert str(info.value).startswith("not a valid record (")
    assert where in str(info.value)


@pytest.mark.parametrize("headers", [[], "x: y", 5])
def test_from_json_rejects_non_object_headers_as_record_error(headers: object) -> None:
    raw = json.dumps({"id": "a", "mode": "block", "request_headers": headers})
    with pytest.raises(RecordError, match="request_headers"):
        Record.from_json(raw)
