"""The violations log (a capped Redis stream), its metric labels, and ``akto-ingest violations``."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import pytest

from akto_ingest import violations
from akto_ingest.cli import main, since_ms
from akto_ingest.queue import violations_key
from akto_ingest.record import Record
from akto_ingest.violations import PolicyLabels, Violation, severity_label
from akto_ingest.wire import Verdict

from .conftest import REAL_REDIS_URL

FLAG = Verdict(allowed=False, reason="PII detected", behaviour="alert", policy="PII", rule="email", severity="medium")


def blocked_record(**fields: Any) -> Record:
    values: dict[str, Any] = {
        "id": "call-b",
        "mode": "block",
        "created_ms": 1_700_000_000_000,
        "status_code": 400,
        "blocked_reason": "Prompt injection detected",
        "blocked_policy": "Prompt Shield",
        "blocked_rule": "prompt_injection",
        "blocked_severity": "high",
    }
    values.update(fields)
    return Record(**values)


def test_a_blocked_record_is_a_blocked_violation_with_its_details() -> None:
    found = violations.of_blocked(blocked_record(path="/v1/responses"))
    assert found == Violation(
        time_ms=1_700_000_000_000,
        call_id="call-b",
        mode="blocked",
        reason="Prompt injection detected",
        policy="Prompt Shield",
        rule="prompt_injection",
        severity="high",
        behaviour="block",
        path="/v1/responses",
    )


def test_a_record_that_was_not_blocked_is_no_violation() -> None:
    assert violations.of_blocked(Record(id="ok", mode="block")) is None


def test_a_blocked_record_without_metadata_still_is_one() -> None:
    found = violations.of_blocked(blocked_record(blocked_policy=None, blocked_rule=None, blocked_severity=None))
    assert found is not None
    assert (found.policy, found.rule, found.severity) == ("", "", "")


def test_a_flag_is_a_flagged_violation_with_akto_behaviour() -> None:
    found = violations.of_verdict(Record(id="m", mode="monitor", created_ms=5), FLAG)
    assert (found.mode, found.reason, found.policy, found.rule, found.severity, found.behaviour) == (
        "flagged",
        "PII detected",
        "PII",
        "email",
        "medium",
        "alert",
    )
    # An empty behaviour blocks, in Akto's terms; monitor mode records that it would have.
    no_behaviour = Verdict(allowed=False, reason="x", behaviour="")
    assert violations.of_verdict(Record(id="m", mode="monitor"), no_behaviour).behaviour == "block"


def test_runaway_texts_are_capped() -> None:
    found = violations.of_blocked(blocked_record(blocked_reason="r" * 5000))
    assert found is not None and len(found.reason) == violations.MAX_TEXT


async def test_the_log_reads_back_newest_first_and_by_limit(fake_redis: Any) -> None:
    written = [violations.of_verdict(Record(id=f"c{i}", mode="monitor"), FLAG) for i in range(5)]
    await violations.add(fake_redis, "q", written)
    assert [v.call_id for v in await violations.recent(fake_redis, "q")] == ["c4", "c3", "c2", "c1", "c0"]
    assert [v.call_id for v in await violations.recent(fake_redis, "q", limit=2)] == ["c4", "c3"]
    assert await violations.count(fake_redis, "q") == 5
    assert (await violations.recent(fake_redis, "q"))[0] == written[4]


async def test_since_reads_only_what_was_written_since(fake_redis: Any) -> None:
    await violations.add(fake_redis, "q", [violations.of_verdict(Record(id="old", mode="monitor"), FLAG)])
    [(entry_id, _)] = await fake_redis.xrange(violations_key("q"))
    written_ms = int(entry_id.split(b"-")[0])
    assert [v.call_id for v in await violations.recent(fake_redis, "q", since_ms=written_ms)] == ["old"]
    assert await violations.recent(fake_redis, "q", since_ms=written_ms + 1) == []


async def test_nothing_to_add_writes_nothing(fake_redis: Any) -> None:
    await violations.add(fake_redis, "q", [])
    assert await fake_redis.exists(violations_key("q")) == 0


async def test_the_log_is_capped(real_redis: Any, queue_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(violations, "MAX_ENTRIES", 100)
    one = violations.of_verdict(Record(id="c", mode="monitor"), FLAG)
    for _ in range(10):
        await violations.add(real_redis, queue_name, [one] * 100)
    # Redis trims whole nodes of the stream (about 100 entries each), never below the cap.
    assert 100 <= await violations.count(real_redis, queue_name) < 300


def test_severity_labels_are_a_fixed_set() -> None:
    assert severity_label("HIGH") == "high"
    assert severity_label(" Critical ") == "critical"
    assert severity_label("") == "none"
    assert severity_label("catastrophic") == "other"


def test_policy_labels_keep_the_first_names_then_say_other() -> None:
    labels = PolicyLabels(limit=3)
    assert [labels(name) for name in ("a", "b", "a", "c", "d", "b", "")] == ["a", "b", "a", "c", "other", "b", "none"]
    # Names that would collide with the catch-alls never take a slot.
    assert PolicyLabels(limit=3)("other") == "other"
    assert len(PolicyLabels()("p" * 500)) == violations.MAX_LABEL_CHARS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", 1_000_000_000_000 - 90_000),
        ("15m", 1_000_000_000_000 - 900_000),
        ("1.5h", 1_000_000_000_000 - 5_400_000),
        ("7d", 1_000_000_000_000 - 604_800_000),
        ("2026-01-31T12:00:00Z", 1_769_860_800_000),
        ("2026-01-31T12:00:00", 1_769_860_800_000),
        ("2026-01-31T14:00:00+02:00", 1_769_860_800_000),
    ],
)
def test_since_takes_a_duration_or_an_iso_time(text: str, expected: int) -> None:
    assert since_ms(text, now=1_000_000_000_000) == expected


def test_a_bad_since_names_what_it_accepts() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"neither a duration .* nor an ISO-8601 time"):
        since_ms("yesterday")


async def test_the_command_lists_the_log(real_redis: Any, queue_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    found = violations.of_blocked(blocked_record())
    assert found is not None
    await violations.add(real_redis, queue_name, [found])
    args = ["--redis-url", REAL_REDIS_URL, "--queue", queue_name, "violations"]
    # The command runs its own event loop.
    assert await asyncio.to_thread(main, [*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [found.model_dump()]
    assert await asyncio.to_thread(main, args) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "1 violation(s), newest first (1 kept)"
    assert text.splitlines()[1] == (
        "2023-11-14T22:13:20Z  blocked  call-b  severity=high  policy=Prompt Shield  rule=prompt_injection  "
        "/v1/chat/completions  Prompt injection detected"
    )
    assert await asyncio.to_thread(main, [*args, "--since", "1m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [found.model_dump()], "written just now"


def test_a_bad_limit_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["violations", "--limit", "0"])
    assert "'0' is not a positive whole number" in capsys.readouterr().err
