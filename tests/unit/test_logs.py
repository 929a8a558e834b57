from __future__ import annotations

import json
import logging

from akto_ingest.logs import JsonFormatter


def _format(msg: str, *args: object, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("akto_worker", logging.WARNING, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return dict(json.loads(JsonFormatter().format(record)))


def test_json_lines_carry_the_call_id_from_the_message() -> None:
    line = _format("akto violation call_id=%s reason=%r", "abc-123", "Prompt injection detected")
    assert line["call_id"] == "abc-123"
    assert line["level"] == "warning"
    assert line["logger"] == "akto_worker"
    assert line["msg"] == "akto violation call_id=abc-123 reason='Prompt injection detected'"


def test_explicit_call_id_wins_and_lines_without_one_have_none() -> None:
    assert _format("x call_id=a", call_id="b")["call_id"] == "b"
    assert "call_id" not in _format("worker ready")
