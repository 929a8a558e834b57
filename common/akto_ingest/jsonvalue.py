"""The JSON values a record's bodies may hold: the limits the hook and the worker share, and the one
walk that brings any Python value within them.

Every parser and encoder on a record's way has a limit of its own: orjson writes 254 levels and
integers in [-2**63, 2**64) (and reads 1,024 levels, an integer past that range as a float), pydantic's
JSON parser stops at 201 levels, ``json`` recurses until Python's recursion limit. Where the hook
encodes a record that orjson refuses (``Record.to_json``), where the worker reads one past pydantic's
depth (``Record.from_json``) and where its envelope meets a value orjson refuses, its bodies go
through :func:`bounded`, so what the hook writes the worker can read and deliver:

- a container deeper than :data:`MAX_DEPTH` (the body itself is level 1) is carried as its JSON text;
- an integer orjson cannot write is carried as its decimal text (past Python's 4,300-digit limit for
  decimal text, as hexadecimal text ``0x…``);
- a float JSON has no form for (NaN, infinities) becomes null, as orjson and pydantic write it;
- a key that is not text becomes its ``str()``; a tuple becomes a list; a pydantic model becomes its
  ``model_dump()``; anything else becomes its ``str()``;
- with ``text=True`` (where the hook encodes), a lone surrogate becomes U+FFFD.

Both walks are loops over an explicit stack, never recursion, so no depth or width can raise
``RecursionError``; a container that holds itself is deeper than any limit, and its text names the
cycle instead of following it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from pydantic import BaseModel

# 128 levels leaves room under orjson's 254 for the record and the envelope around a body, and under
# pydantic's 201 should a record be read with it.
MAX_DEPTH = 128
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1

# Lone surrogates are the one thing a Python str can hold that UTF-8 (so JSON) cannot.
SURROGATE = re.compile("[\ud800-\udfff]")
CYCLE = '"<cycle>"'


def repair_text(text: str) -> str:
    """``text`` with each lone surrogate as U+FFFD (a valid pair is joined into its character)."""
    if SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


# orjson then refuses what is not plain JSON data (it writes tuples as lists, and NaN as null as the walk does).
_PLAIN_ONLY = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def within(value: Any) -> bool:
    """True when ``value`` is JSON data inside every limit: :func:`bounded` would return it as is.

    The common case is one orjson pass: orjson refuses
    lone surrogates, integers past its range, keys that are not text and types JSON has no form for,
    and its indented text shows the depth: a container deeper than :data:`MAX_DEPTH` is on a line
    indented at least ``2 * MAX_DEPTH`` spaces (text holds no raw newline: JSON escapes it). Such a
    line may also be a leaf at the deepest level allowed; only then are the containers walked."""
    try:
        encoded = orjson.dumps(value, option=_PLAIN_ONLY | orjson.OPT_INDENT_2)
    except TypeError:
        return False
    if _DEEPEST_LINE not in encoded:
        return True
    level = [value] if type(value) in _CONTAINERS else []
    for _ in range(MAX_DEPTH):
        below = []
        for container in level:
            for child in container.values() if type(container) is dict else container:
                if type(child) in _CONTAINERS:
                    below.append(child)
        level = below
    return not level


_DEEPEST_LINE = b"\n" + b" " * (2 * MAX_DEPTH)
_CONTAINERS = frozenset({dict, list, tuple})


def bounded(value: Any, *, text: bool = False) -> Any:
    """``value`` as plain JSON data within the limits above; returns ``value`` itself when it already is."""
    if within(value):
        return value
    root: list[Any] = []
    # Each frame: the source's remaining children, the container being built, and its depth.
    stack: list[tuple[Iterator[tuple[Any, Any]], dict[str, Any] | list[Any], int]] = [(iter([(None, value)]), root, 0)]
    while stack:
        children, target, depth = stack[-1]
        entry = next(children, None)
        if entry is None:
            stack.pop()
            continue
        key, child = entry
        child = _container_or_leaf(child)
        made: Any
        if isinstance(child, Mapping | list):
            if depth + 1 > MAX_DEPTH:
                made = dumps(child)
            elif isinstance(child, Mapping):
                made = {}
                stack.append((((_key(k, text), v) for k, v in child.items()), made, depth + 1))
            else:
                made = []
                stack.append((((None, v) for v in child), made, depth + 1))
        else:
            made = _leaf(child, text)
        if isinstance(target, dict):
            target[key] = made
        else:
            target.append(made)
    return root[0]


def dumps(value: Any) -> str:
    """``value`` as compact JSON text, at any depth and width, with the leaves :func:`bounded` makes
    (an integer keeps its exact decimal digits: text holds any size)."""
    out: list[str] = []
    # Each frame: the container's remaining children, whether it is a mapping, and its id (for cycles).
    stack: list[tuple[Iterator[Any], bool, int]] = []
    open_ids: set[int] = set()
    item: Any = value
    while True:
        item = _container_or_leaf(item)
        if isinstance(item, Mapping | list) and id(item) in open_ids:
            out.append(CYCLE)
        elif isinstance(item, Mapping):
            out.append("{")
            stack.append((iter(item.items()), True, id(item)))
            open_ids.add(id(item))
        elif isinstance(item, list):
            out.append("[")
            stack.append((iter(item), False, id(item)))
            open_ids.add(id(item))
        else:
            out.append(_leaf_text(item))
        while stack:
            children, is_mapping, ident = stack[-1]
            entry: Any = next(children, _END)
            if entry is _END:
                out.append("}" if is_mapping else "]")
                stack.pop()
                open_ids.discard(ident)
                continue
            if out[-1] not in ("{", "["):
                out.append(",")
            if is_mapping:
                key, item = entry
                out.append(_string(_key(key, True)) + ":")
            else:
                item = entry
            break
        else:
            return "".join(out)


_END: Any = object()


def _container_or_leaf(value: Any) -> Any:
    """Containers as a Mapping or a list; anything else is a leaf."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, BaseModel):
        try:
            return value.model_dump()
        except Exception:
            return _text_of(value)
    return value


def _key(key: Any, text: bool) -> str:
    key = key if isinstance(key, str) else _text_of(key)
    return repair_text(key) if text else key


def _leaf(value: Any, text: bool) -> Any:
    """A leaf as plain JSON data within the limits."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value) if MIN_INT <= value <= MAX_INT else _int_text(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    value = str(value) if isinstance(value, str) else _text_of(value)
    return repair_text(value) if text else value


def _leaf_text(value: Any) -> str:
    """A leaf as JSON text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(int(value))
        except ValueError:  # past Python's limit on decimal digits
            return _string(hex(value))
    if isinstance(value, float):
        return orjson.dumps(float(value)).decode() if math.isfinite(value) else "null"
    return _string(value if isinstance(value, str) else _text_of(value))


def _int_text(value: int) -> str:
    try:
        return str(int(value))
    except ValueError:  # past Python's limit on decimal digits
        return hex(value)


def _string(text: str) -> str:
    return orjson.dumps(repair_text(text)).decode()


def _text_of(value: Any) -> str:
    """``str(value)`` for a value JSON has no form for; its type's name when even that fails."""
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"
