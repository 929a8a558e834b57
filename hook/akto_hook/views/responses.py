"""OpenAI's Responses API: ``input`` (a string or a list of items) and ``instructions``.

Embeddings' ``input`` (a string or a list of strings) reads the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .chat import content_segments, message_segments, part_segments
from .generic import Segment
from .generic import segments as generic_segments


def segments(key: str, value: Any) -> Iterator[Segment]:
    if key == "instructions":
        yield from content_segments("system", value)
    elif key == "input" and isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping) and "role" in item:
                yield from message_segments(item)
            else:
                yield from part_segments("user", item)
    else:
        yield from generic_segments(key, value)
