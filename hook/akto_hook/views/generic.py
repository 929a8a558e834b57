"""The default reading of a request field no family module names: text as text, the rest as JSON.

Every field of a body is read by some module; this one takes whatever the others do not (a rerank's
``query`` and ``documents``, an image prompt, a pass-through route's body, a field added tomorrow),
so nothing is skipped. A long JSON is cut into slices like any long text (``check.split``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

Segment = tuple[str, str]


def segments(key: str, value: Any) -> Iterator[Segment]:
    """A field's text (a string, or each string of a list of strings), else the field as JSON."""
    if isinstance(value, str):
        yield "user", value
    elif isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        for item in value:
            yield "user", item
    elif value is not None:
        yield "system", as_json({key: value})


def as_json(value: Any) -> str:
    return orjson.dumps(value).decode()
