"""Chat completions and text completions: ``messages`` (string or content parts) and ``prompt``.

Anthropic's messages and the Responses API's input items share the message shape; their modules
reuse :func:`message_segments` and :func:`content_segments`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from . import attachments
from .generic import Segment, as_json
from .generic import segments as generic_segments


def segments(key: str, value: Any) -> Iterator[Segment]:
    if key == "messages" and isinstance(value, list):
        for message in value:
            yield from message_segments(message)
    else:
        yield from generic_segments(key, value)


def message_segments(message: Any) -> Iterator[Segment]:
    """A message's content under its role, then what else it carries (tool calls...) as JSON."""
    if not isinstance(message, Mapping):
        yield "user", as_json(message)
        return
    role = message.get("role")
    role = role if isinstance(role, str) and role else "user"
    yield from content_segments(role, message.get("content"))
    rest = {k: v for k, v in message.items() if k not in ("role", "content") and v is not None}
    if rest:
        yield role, as_json(rest)


def content_segments(role: str, content: Any) -> Iterator[Segment]:
    if isinstance(content, list):
        for item in content:
            yield from part_segments(role, item)
    elif content is not None:
        yield from part_segments(role, content)


def part_segments(role: str, part: Any) -> Iterator[Segment]:
    """One content part's text: ``text``/``input_text``/``output_text`` as text, a ``tool_result``'s
    content as its own parts, an attachment's summary not at all (it is no text), anything else
    (``tool_use``, a function call, an image URL) as its JSON."""
    if part is None:
        return
    if attachments.is_summary(part):
        # An attachment is no text, but a document's title (its file name) is shown to the model.
        if isinstance(part.get("filename"), str):
            yield role, part["filename"]
        return
    if isinstance(part, str):
        yield role, part
    elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
        yield role, part["text"]
        rest = {k: v for k, v in part.items() if k not in ("type", "text") and v is not None}
        if rest:
            yield role, as_json(rest)
    elif isinstance(part, Mapping) and part.get("type") == "tool_result":
        yield from content_segments(role, part.get("content"))
        rest = {k: v for k, v in part.items() if k != "content" and v is not None}
        yield role, as_json(rest)
    else:
        yield role, as_json(part)
