"""One contract for both sides: a record the hook can build, the worker can read and deliver.

Bodies come from a small seeded generator (deep, wide, huge integers, odd floats, text from every
Unicode plane with lone surrogates, keys that are not text, tuples, cycles); the same seeds run every
time, so a failure is reproducible by its seed.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from akto_hook.recording.enqueue import Enqueuer
from akto_ingest import jsonvalue
from akto_ingest.config import AktoSettings
from akto_ingest.record import Record
from akto_ingest.wire import INGEST_DATA_LIMITS, encode, envelope
from akto_worker.delivery import Deliverer
from tests.fake_akto import FakeAkto

from .conftest import REAL_REDIS_URL

AKTO = AktoSettings.load({"akto_base_url": "http://akto", "akto_api_key": "k"}, env={})
# The deepest JSON orjson writes (the hook's encoder); the worker reads up to 1,024.
ORJSON_DEPTH = 255
PLANES = [(0x20, 0x7F), (0x80, 0xD7FF), (0xD800, 0xDFFF), (0xE000, 0xFFFF)] + [
    (plane << 16, (plane << 16) + 0xFFFF) for plane in (1, 2, 3, 14, 15, 16)
]
ODD_INTS = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 2**200, -(10**40)]
ODD_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324]


def text(rng: random.Random) -> str:
    """A short string with characters from every plane, lone surrogates included."""
    return "".join(chr(rng.randint(*rng.choice(PLANES))) for _ in range(rng.randint(0, 12)))


def leaf(rng: random.Random) -> Any:
    pick = rng.randrange(7)
    if pick == 0:
        return rng.choice(ODD_INTS)
    if pick == 1:
        return rng.choice(ODD_FLOATS)
    if pick == 2:
        return rng.choice([None, True, False, rng.randint(-1000, 1000), rng.random()])
    if pick == 3:
        return (text(rng), rng.randint(0, 9))
    return text(rng)


def body(rng: random.Random) -> dict[str, Any]:
    """A generated body, built with a loop so that no depth needs recursion to build."""
    root: dict[str, Any] = {"model": "gpt-4o"}
    open_containers: list[Any] = [root]
    for _ in range(rng.randint(1, 400)):
        parent = rng.choice(open_containers)
        child: Any = leaf(rng)
        if rng.random() < 0.4:
            child = {} if rng.random() < 0.5 else []
            open_containers.append(child)
        if isinstance(parent, dict):
            # The schema's bodies are objects with text keys at the top; keys below may be anything.
            odd_key = parent is not root and rng.random() < 0.2
            key: Any = rng.choice([7, 2.5, None, ("t", 1)]) if odd_key else text(rng)
            parent[key] = child
        else:
            parent.append(child)
    # A chain far past every parser's limit, with odd leaves at its end.
    deep: Any = [leaf(rng), leaf(rng)]
    for level in range(rng.choice([3, 150, 250, 400, 3000])):
        deep = {text(rng) or "k": deep} if level % 2 else [deep]
    root["tools"] = [{"type": "function", "function": {"name": "f", "parameters": deep}}]
    return root


def depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


@pytest.mark.parametrize("seed", range(40))
def test_a_generated_record_the_hook_builds_the_worker_reads_and_delivers(seed: int) -> None:
    rng = random.Random(seed)
    record = Record(id=f"gen-{seed}", mode="monitor", request_body=body(rng), response_body=body(rng))

    line = record.to_json()

    read = Record.from_json(line)
    assert depth(orjson.loads(line)) <= ORJSON_DEPTH
    assert Record.from_json(read.to_json()) == read, "what the worker reads reads back as itself"
    try:
        wire_body = envelope(read, AKTO)
    except TypeError:  # the worker's path for a value orjson cannot write
        wire_body = envelope(read.repaired(), AKTO)
    encoded = encode(wire_body, INGEST_DATA_LIMITS)
    payload = orjson.loads(orjson.loads(orjson.loads(encoded)["requestPayload"])["body"])
    assert payload["model"] == "gpt-4o"


def test_values_past_the_limits_are_carried_as_their_text() -> None:
    deep: Any = "end"
    for _ in range(jsonvalue.MAX_DEPTH + 5):
        deep = [deep]
    record = Record(
        id="c",
        mode="block",
        request_body={"big": 2**64, "small": -(2**63) - 1, "ok": 2**64 - 1, "nan": math.nan, "deep": deep},
    )
    body = orjson.loads(record.to_json())["request_body"]
    assert body["big"] == "18446744073709551616"
    assert body["small"] == str(-(2**63) - 1)
    assert body["ok"] == 2**64 - 1
    assert body["nan"] is None
    assert depth(body) == jsonvalue.MAX_DEPTH
    # The container at the limit holds its subtree as text: the same value, read by any parser.
    inner = body["deep"]
    for _ in range(jsonvalue.MAX_DEPTH - 1):
        inner = inner[0]
    assert isinstance(inner, str)
    assert json.loads(inner) == [[[[[["end"]]]]]]


def test_an_integer_past_pythons_decimal_limit_is_carried_as_hex_text() -> None:
    huge = 1 << 20_000
    record = Record(id="c", mode="block", request_body={"n": huge})
    assert orjson.loads(record.to_json())["request_body"]["n"] == hex(huge)


def test_a_body_that_holds_itself_is_kept_with_the_cycle_named() -> None:
    looped: dict[str, Any] = {"a": 1}
    looped["self"] = looped
    line = Record(id="c", mode="block", request_body=looped).to_json()
    assert '\\"<cycle>\\"' in line, "inside the text of the subtree past the limit"
    assert Record.from_json(line).request_body["a"] == 1


@pytest.mark.parametrize("levels", [150, 250, 400, 3000])
def test_the_json_text_of_a_deep_value_matches_the_standard_encoder(levels: int) -> None:
    value: Any = {"leaf": [1, 2.5, "é\U0001f600", None, True]}
    for level in range(levels):
        value = {f"k{level}": value} if level % 2 else [value, level]
    text = jsonvalue.dumps(value)
    # json recurses: its limit is raised for the comparison only.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * levels + 100))
    try:
        expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        assert json.loads(text) == json.loads(expected)
    finally:
        sys.setrecursionlimit(limit)
    assert text == expected


def test_a_copy_whose_body_was_replaced_still_encodes() -> None:
    # model_copy(update=...) does not validate; the hook uses it to apply masks and verdicts.
    deep: Any = "x"
    for _ in range(3000):
        deep = {"d": deep}
    copy = Record(id="c", mode="block").model_copy(update={"response_body": {"n": 2**70, "deep": deep}})
    line = copy.to_json()
    assert Record.from_json(line).response_body["n"] == str(2**70)  # type: ignore[index]
    assert envelope(copy.repaired(), AKTO)["responsePayload"]


def tool_request(levels: int) -> dict[str, Any]:
    """A chat request whose tool ``parameters`` schema nests ``levels`` levels deep."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels // 2):
        schema = {"type": "object", "properties": {"p": schema}}
    return {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
        "max_tokens": 2**64,
    }


@pytest.mark.parametrize("levels", [150, 250, 400])
async def test_the_hook_queues_what_the_worker_delivers(
    levels: int, tmp_path: Path, queue_name: str, fake_akto: FakeAkto, make_deliverer: Callable[..., Deliverer]
) -> None:
    enqueuer = Enqueuer(REAL_REDIS_URL, queue_name, 0.5, tmp_path, 10 * 1024 * 1024)
    try:
        record = Record(id=f"deep-{levels}", mode="monitor", request_body=tool_request(levels))
        assert await enqueuer.put(record), "the hook queues the record"
        [line] = await enqueuer._redis.lrange(f"{queue_name}:inbox", 0, -1)  # type: ignore[misc]
        await enqueuer._redis.delete(f"{queue_name}:inbox")
    finally:
        await enqueuer.close()

    outcome = await make_deliverer(fake_akto.url).deliver([line.decode()], 0)

    assert (outcome.delivered, outcome.dead, outcome.retry) == (1, [], [])
    assert list(fake_akto.message_ids()) == [f"deep-{levels}"]
