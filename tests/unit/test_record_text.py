"""No text can break a record: what JSON cannot hold is repaired, kept and counted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from akto_ingest.jsonvalue import repair_text
from akto_ingest.record import TEXT_REPAIRED, Record

LONE = "\ud800"


def repairs() -> float:
    return TEXT_REPAIRED._value.get()


def test_lone_surrogate_in_the_body_is_replaced_and_the_rest_kept() -> None:
    record = Record(id="c1", mode="block", request_body={"messages": [{"role": "user", "content": f"a{LONE}b"}]})
    before = repairs()
    line = record.to_json()
    assert json.loads(line)["request_body"]["messages"][0]["content"] == "a\ufffdb"
    assert Record.from_json(line).id == "c1"
    assert repairs() == before + 1


def test_lone_surrogate_in_a_text_field_still_builds_a_record() -> None:
    before = repairs()
    record = Record(
        id=f"c2{LONE}",
        mode="monitor",
        request_headers={"x-note": f"{LONE}x"},
        metadata={"user_id": f"u{LONE}"},
        request_body={"prompt": f"p{LONE}"},
    )
    assert record.id == "c2\ufffd"
    assert record.request_headers == {"x-note": "\ufffdx"}
    assert record.metadata == {"user_id": "u\ufffd"}
    assert json.loads(record.to_json())["request_body"] == {"prompt": "p\ufffd"}
    assert repairs() == before + 1, "one repair for the whole record"


def test_a_valid_surrogate_pair_becomes_its_character() -> None:
    assert repair_text("\ud83d\ude00 and \udcff") == "\U0001f600 and \ufffd"


def test_values_json_has_no_form_for_become_text() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    record = Record(id="c3", mode="block", request_body={"t": (1, 2), "o": Odd(), "b": {1: True}})
    assert json.loads(record.to_json())["request_body"] == {"t": [1, 2], "o": "odd", "b": {"1": True}}


@pytest.mark.parametrize("text", ["plain", "émoji \U0001f600", 'quote " and \\ and \n\x01'])
def test_normal_text_takes_the_fast_path_unchanged(text: str) -> None:
    record = Record(id="c4", mode="block", request_body={"messages": [{"content": text}]})
    before = repairs()
    assert json.loads(record.to_json())["request_body"]["messages"][0]["content"] == text
    assert repairs() == before


def test_other_validation_errors_are_not_repaired_away() -> None:
    bad: dict[str, Any] = {"id": "", "mode": "block"}
    with pytest.raises(ValueError, match="at least 1 character"):
        Record(**bad)
