"""Anthropic's Messages API: ``system`` (a string or text blocks); its ``messages`` read as chat's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .chat import content_segments
from .generic import Segment


def segments(key: str, value: Any) -> Iterator[Segment]:
    yield from content_segments("system", value)
