"""Google's native ``generateContent`` / ``streamGenerateContent`` (LiteLLM's ``/v1beta/models/...``
routes): ``contents`` (turns of ``parts``) and ``systemInstruction`` (also ``system_instruction``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .chat import part_segments
from .generic import Segment, as_json
from .generic import segments as generic_segments

ROLES = {"model": "assistant", "user": "user", "function": "tool", "tool": "tool"}


def segments(key: str, value: Any) -> Iterator[Segment]:
    if key == "contents" and isinstance(value, list):
        for turn in value:
            yield from _turn("user", turn)
    elif key in ("systemInstruction", "system_instruction"):
        yield from _turn("system", value)
    else:
        yield from generic_segments(key, value)


def _turn(default_role: str, turn: Any) -> Iterator[Segment]:
    """One ``Content``: its parts' text under its role; function calls, responses and the rest as JSON."""
    if isinstance(turn, str):
        yield default_role, turn
        return
    if not isinstance(turn, Mapping):
        yield default_role, as_json(turn)
        return
    role = ROLES.get(str(turn.get("role")), default_role)
    parts = turn.get("parts")
    for part in parts if isinstance(parts, list) else [parts]:
        yield from part_segments(role, part)
    rest = {k: v for k, v in turn.items() if k not in ("role", "parts") and v is not None}
    if rest:
        yield role, as_json(rest)
