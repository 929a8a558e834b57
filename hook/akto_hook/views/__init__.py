"""What Akto sees of a LiteLLM call, decided in one place.

- :func:`request_body` (``body.py``): the whole request as the LLM call will use it, less LiteLLM's
  bookkeeping, with credentials redacted (``redact.py``) and attachments fingerprinted. The check,
  the record, masking and the response check all start from it.
- :func:`segments`: a body's text, piece by piece with its role, for checking a body too long for
  one Akto call in parts (``check.split``). One small module per API family reads the fields it
  knows (``chat.py``, ``responses.py``, ``anthropic.py``, ``gemini.py``); ``generic.py`` reads every
  other field, so no field is ever left out. MCP tool calls are shaped in ``akto_hook.mcp``.

Adding an API family is adding one module here and its fields to :data:`FIELD_READERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from . import anthropic, chat, gemini, generic, responses
from .body import BOOKKEEPING, Unreadable, cleaned, content, is_bookkeeping, request_body
from .generic import Segment
from .redact import REDACTED

# Which family reads which field; any other field is read by ``generic``.
FIELD_READERS: dict[str, Callable[[str, Any], Iterator[Segment]]] = {
    "messages": chat.segments,
    "input": responses.segments,
    "instructions": responses.segments,
    "system": anthropic.segments,
    "contents": gemini.segments,
    "systemInstruction": gemini.segments,
    "system_instruction": gemini.segments,
}

# Fields that name the call rather than carry content; kept in every part of a split body.
FRAME_FIELDS = ("model",)


def segments(body: Mapping[str, Any]) -> Iterator[Segment]:
    """Every piece of ``body``'s content as ``(role, text)``: text as text, the rest as JSON."""
    for key, value in body.items():
        if key in FRAME_FIELDS or value is None:
            continue
        yield from FIELD_READERS.get(key, generic.segments)(key, value)


__all__ = [
    "BOOKKEEPING",
    "REDACTED",
    "Segment",
    "Unreadable",
    "cleaned",
    "content",
    "is_bookkeeping",
    "request_body",
    "segments",
]
