"""Akto's masking (block mode): putting Akto's rewrite of what we sent back onto what LiteLLM sends.

Akto answers a masking policy with ``Allowed: true, Modified: true`` and ``ModifiedPayload``, the whole
payload it was sent with values replaced. Which values changed is found by comparing the two as JSON,
leaf by leaf: a change is a path (``("messages", 0, "content")``) with the text we sent and Akto's
replacement. That covers every request shape the same way: chat ``messages`` (string or content
parts), the Responses API's ``input`` (string or item list) and ``instructions``, Anthropic's
``system`` (string or blocks) and ``messages``, and a response's ``choices``.

A change is applied at the same path of LiteLLM's request ``data``, only where the text there is
still the text Akto saw; anything else is :class:`Unmappable`, and the caller blocks: the unmasked
text is never sent on. The call's record gets the same changes (:class:`MaskedCalls`), so Akto
ingests what the LLM got.

A request too long to check whole was checked as synthetic chat parts (``check.split``). A part's
masked message is mapped back by its text: it must be the whole of some text in the request (a
message's content, a content part's text, a string field), and every such text gets the mask. A
mask inside a text that was cut into slices, or inside what the parts carry as JSON (tool calls,
non-text blocks), is unmappable.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from akto_ingest.record import Record

from .. import calls
from .check import Decision, Mask, blocked_fields

Path = tuple[str | int, ...]

# Calls known by their call id alone (no logging object, see ``calls.py``) whose masks are kept until
# LiteLLM logs the call; the others' go with the call.
MEMORY = calls.BY_ID_MEMORY


class Unmappable(Exception):
    """Akto's mask cannot be put back onto the request or response; the message says why."""


@dataclass(frozen=True)
class Change:
    """One masked value: where it is, what it was, what Akto made of it."""

    path: Path
    before: str
    after: str


def decode_payload(payload: str) -> Any:
    """A payload as Akto holds it, decoded: ``{"body": "<json>"}`` is unwrapped to the body."""
    try:
        value = orjson.loads(payload)
        if isinstance(value, dict) and set(value) == {"body"} and isinstance(value["body"], str):
            value = orjson.loads(value["body"])
    except orjson.JSONDecodeError:
        raise Unmappable("Akto's masked payload is not JSON") from None
    return value


def leaves(value: Any, path: Path = ()) -> dict[Path, Any]:
    """Every leaf of a JSON value by its path; empty objects and lists are leaves too."""
    if isinstance(value, Mapping) and value:
        out: dict[Path, Any] = {}
        for key, item in value.items():
            out.update(leaves(item, (*path, str(key))))
        return out
    if isinstance(value, list) and value:
        out = {}
        for index, item in enumerate(value):
            out.update(leaves(item, (*path, index)))
        return out
    return {path: value}


def changes(sent: Any, masked: Any) -> list[Change]:
    """The values Akto replaced, comparing what was sent with Akto's rewrite of it."""
    before, after = leaves(sent), leaves(masked)
    if before.keys() != after.keys():
        raise Unmappable("Akto's masked payload does not have the shape of what was checked")
    found = []
    for path, old in before.items():
        new = after[path]
        if new == old:
            continue
        if not isinstance(old, str) or not isinstance(new, str):
            raise Unmappable(f"Akto's mask changed {_where(path)}, which is not text")
        found.append(Change(path, old, new))
    return found


def request_changes(body: Mapping[str, Any], masks: Iterable[Mask], *, split: bool) -> list[Change]:
    """The changes Akto's masks make to ``body`` (the request body the check was made of)."""
    if not split:
        found: list[Change] = []
        for mask in masks:
            found.extend(changes(decode_payload(mask.sent), decode_payload(mask.masked)))
        return found
    texts: dict[str, str] = {}
    for mask in masks:
        for change in changes(decode_payload(mask.sent), decode_payload(mask.masked)):
            if len(change.path) != 3 or change.path[0] != "messages" or change.path[2] != "content":
                raise Unmappable("Akto's mask of a part of this long request is not in a message's text")
            if texts.setdefault(change.before, change.after) != change.after:
                raise Unmappable("Akto masked the same text of this long request in two different ways")
    targets = {path: text for path, text in leaves(body).items() if isinstance(text, str) and text in texts}
    if set(targets.values()) != set(texts):
        raise Unmappable(
            "Akto masked part of a request too long to check whole, inside a text checked in slices or content "
            "checked as JSON; such a mask cannot be put back"
        )
    return [Change(path, text, texts[text]) for path, text in targets.items()]


def masked_request(data: dict[str, Any], found: Iterable[Change]) -> dict[str, Any]:
    """A copy of LiteLLM's request ``data`` with the changes applied: what the LLM gets."""
    return _with_changes(
        data, list(found), lambda change: f"the request's {_where(change.path)} is not the text Akto saw"
    )


def masked_body(body: dict[str, Any], found: Iterable[Change]) -> dict[str, Any]:
    """``body`` (a record's request or response body) with the changes applied."""
    return _with_changes(body, list(found), lambda change: f"{_where(change.path)} is not the text Akto saw")


def recorded_request(body: dict[str, Any], masks: Iterable[Mask], *, split: bool) -> tuple[dict[str, Any], bool]:
    """What to record of a request blocked because its mask could not be applied: the body as Akto
    masked it where that can be read (so the record does not keep what the mask hides), else as
    sent; and whether it is masked."""
    masks = list(masks)
    try:
        return masked_body(body, request_changes(body, masks, split=split)), True
    except Unmappable:
        pass
    if len(masks) == 1 and not split:
        try:
            rewritten = decode_payload(masks[0].masked)
        except Unmappable:
            rewritten = None
        if isinstance(rewritten, dict):
            return rewritten, True
    return dict(body), False


def masked_call(
    data: dict[str, Any], record: Record, decision: Decision, *, during_call: bool, returns_discarded: bool = False
) -> tuple[dict[str, Any], list[Change]]:
    """The block-mode check's masks applied to LiteLLM's request ``data`` (``record`` is the request
    as checked): the masked ``data`` and the changes, or :class:`Unmappable` with the client's reason.
    ``returns_discarded``: LiteLLM throws away the request this guardrail returns."""
    try:
        if during_call:
            raise Unmappable(
                "mode during_call cannot apply it: the prompt was already sent to the LLM (use mode pre_call)"
            )
        if returns_discarded:
            raise Unmappable(
                "LiteLLM discards the request a guardrail with run_in_parallel or scan_raw_request returns "
                "(remove that setting to mask)"
            )
        found = request_changes(record.request_body, decision.masks, split=decision.split)
        return masked_request(data, found), found
    except Unmappable as exc:
        raise Unmappable(f"Akto masked this request, and the mask cannot be applied: {exc}") from None


def refused_record(record: Record, decision: Decision, reason: str, *, during_call: bool) -> Record:
    """The blocked record of a request whose mask could not be applied."""
    body, is_masked = recorded_request(record.request_body, decision.masks, split=decision.split)
    metadata = dict(record.metadata)
    if is_masked:
        metadata["masked"] = "request"
    if during_call:
        metadata["llm_output"] = "discarded"
    update = {**blocked_fields(reason, decision.verdict), "request_body": body, "metadata": metadata}
    return record.model_copy(update=update)


def apply_to_object(target: Any, found: Iterable[Change]) -> None:
    """Apply the changes in place to a response object (a LiteLLM model or a dict), found by path
    through attributes, keys and indices."""
    for change in found:
        outcome = _replace(target, change)
        if outcome == "missing":
            raise Unmappable(f"{_where(change.path)} is not in the response")
        if outcome == "other text":
            raise Unmappable(f"the response's {_where(change.path)} is not the text Akto saw")


def _replace(target: Any, change: Change) -> Literal["replaced", "missing", "other text"]:
    """Put ``change.after`` at ``change.path`` of ``target`` (through keys, indices and attributes) in
    place; changes nothing when the path is missing or holds other than ``change.before``."""
    parent = target
    last = change.path[-1]
    try:
        for step in change.path[:-1]:
            parent = _step(parent, step)
        current = _step(parent, last)
    except (KeyError, IndexError, AttributeError, TypeError):
        return "missing"
    if current != change.before:
        return "other text"
    if isinstance(parent, dict | list):
        parent[last] = change.after  # type: ignore[index]
    else:
        setattr(parent, str(last), change.after)
    return "replaced"


def _step(value: Any, step: str | int) -> Any:
    if isinstance(value, list | dict):
        return value[step]  # type: ignore[index]
    return getattr(value, str(step))


def _with_changes(data: dict[str, Any], found: list[Change], problem: Callable[[Change], str]) -> dict[str, Any]:
    out = dict(data)
    for key in {change.path[0] for change in found}:
        if key in out:
            out[key] = copy.deepcopy(out[key])
    for change in found:
        if _replace(out, change) != "replaced":
            raise Unmappable(problem(change))
    return out


def _where(path: Path) -> str:
    return ".".join(str(step) for step in path) or "the payload"


class MaskedCalls:
    """What was masked of which calls (sides ``request`` and ``response``, and the request's
    changes), until their record is made.

    The record is built from LiteLLM's copy of the client's request, which on some routes
    (``/v1/messages``, ``/v1/responses``) is taken before the pre-call hook; the changes are applied
    to it here, so the record holds what the LLM got.
    """

    def __init__(self, size: int = MEMORY) -> None:
        self._calls: calls.PerCall[tuple[list[str], list[Change]]] = calls.PerCall(size)

    def remember(self, key: calls.Key, side: str, found: Iterable[Change] = ()) -> None:
        """Note what was masked of call ``key`` (``calls.key_of``)."""
        sides, changes = self._calls.get(key) or ([], [])
        self._calls[key] = (sides, changes)
        if side not in sides:
            sides.append(side)
        changes.extend(found)

    def applied(self, record: Record, key: calls.Key) -> Record:
        """``record`` with call ``key``'s request changes applied to its request body."""
        _, changes = self._calls.get(key) or ((), [])
        if not changes:
            return record
        body = copy.deepcopy(record.request_body)
        for change in changes:
            # A path this copy of the request lacks was masked where LiteLLM had it; nothing to do here.
            _replace(body, change)
        return record.model_copy(update={"request_body": body})

    def tagged(self, record: Record, key: calls.Key) -> Record:
        """:meth:`applied`, with ``masked`` (the sides) in the metadata; the call is then forgotten."""
        record = self.applied(record, key)
        sides, _ = self._calls.pop(key) or ([], [])
        if not sides:
            return record
        return record.model_copy(update={"metadata": {**record.metadata, "masked": ",".join(sides)}})
