from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from akto_ingest.logs import JsonFormatter, mask_urls, setup


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


@pytest.fixture
def logger_name(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv("AKTO_LOG_FORMAT", raising=False)
    name = f"akto_test_{uuid.uuid4().hex[:8]}"
    yield name
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = True


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_text_logs_go_to_the_host_handlers_and_nowhere_else(
    logger_name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    host = Collect()
    monkeypatch.setattr(logging.root, "handlers", [host])
    logger = setup(logger_name)
    logger.info("akto blocked call_id=c1")
    assert logger.propagate is True, "the host's handlers (LiteLLM's JSON logs) must see our lines"
    assert host.lines == ["akto blocked call_id=c1"]
    assert "akto blocked" not in capsys.readouterr().err, "no second copy of the line in our own format"


def test_text_logs_are_printed_by_us_only_while_the_host_prints_nothing(
    logger_name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(logging.root, "handlers", [])
    logger = setup(logger_name)
    logger.info("worker ready")
    assert capsys.readouterr().err.count("worker ready") == 1
    host = Collect()
    logging.root.handlers.append(host)
    logger.info("later line")
    assert host.lines == ["later line"]
    assert "later line" not in capsys.readouterr().err


def test_json_format_is_our_own_handler_and_stops_propagation(
    logger_name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AKTO_LOG_FORMAT", "json")
    host = Collect()
    monkeypatch.setattr(logging.root, "handlers", [host])
    logger = setup(logger_name)
    setup(logger_name)
    logger.warning("akto check failed call_id=c2")
    assert logger.propagate is False
    assert len(logger.handlers) == 1
    assert host.lines == []
    assert json.loads(capsys.readouterr().err)["call_id"] == "c2"


def test_url_credentials_are_masked_in_messages_and_exception_text(caplog: pytest.LogCaptureFixture) -> None:
    name = f"akto_test_{uuid.uuid4().hex[:6]}"
    logger = setup(name)
    with caplog.at_level(logging.INFO, logger=name):
        logger.info("akto worker ready: akto=%s redis=%s", "http://user:s3cret@akto:9090", "redis://:pw2@r:6379/0")
        try:
            raise ConnectionError("cannot reach redis+sentinel://admin:pw3@s1:26379,s2/mymaster")
        except ConnectionError:
            logger.exception("failed")
    text = caplog.text
    assert "akto=http://***@akto:9090" in text
    assert "redis://***@r:6379/0" in text
    assert "redis+sentinel://***@s1:26379" in text
    for secret in ("s3cret", "pw2", "pw3", "admin"):
        assert secret not in text


def test_only_the_credentials_of_a_url_are_masked() -> None:
    assert mask_urls("akto=https://u:p@akto.example.com/x?q=1 and http://plain/") == (
        "akto=https://***@akto.example.com/x?q=1 and http://plain/"
    )
