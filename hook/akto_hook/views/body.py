"""The request body Akto checks and the record keeps: everything the LLM call will use.

Deny by default: the body is the whole of LiteLLM's request ``data`` less a short, named list of
LiteLLM's own bookkeeping (:func:`is_bookkeeping`). A field LiteLLM or a provider adds tomorrow is
checked the day it appears. No prefix is left out: a client's ``litellm_system_prompt`` becomes a
system message, a ``litellm_*`` key LiteLLM does not own goes to the provider as an extra param, and a
pass-through route forwards ``_litellm_*`` keys too.

One pass (:func:`cleaned`) makes it plain JSON, as Akto and Redis take it:

- credentials are redacted at any depth (``redact.py``);
- inline attachments (images, audio, files, Gemini ``inline_data``) become a fingerprint
  (``attachments.py``); raw bytes and uploaded files (an audio upload, an image to edit) too;
- a pydantic model or dataclass becomes its fields.

Anything else is a value this guardrail cannot read: :class:`Unreadable`, and the request gets the
``unreachable_fallback`` (``fail_closed``: 503), never a pass. The walk is iterative, so no depth of
nesting can make it fail.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from . import attachments
from .redact import credential, hidden

# LiteLLM's own additions to a request, as JSON: LiteLLM sets or overwrites each on every route and
# none reaches the LLM (read off a 1.108.7 proxy with a model server that shows what it received).
BOOKKEEPING = frozenset(
    {
        "proxy_server_request",
        "secret_fields",
        "guardrails",
        "litellm_call_id",
        "litellm_metadata",
        "litellm_session_id",
        "litellm_trace_id",
        "litellm_disabled_callbacks",
    }
)
# LiteLLM's live objects (its logging object, HTTP session, caller's auth, trace span, the enum member
# that marks a streamed request): left out as objects only. A client's JSON under one of these names
# is content: LiteLLM forwards an unknown key to the provider on chat, and a pass-through route sends
# the client's body on as it came.
LIVE_OBJECTS = frozenset(
    {
        "litellm_logging_obj",
        "shared_session",
        "user_api_key_dict",
        "litellm_parent_otel_span",
        "litellm_server_streaming_classification",
    }
)

_SCALARS = frozenset({str, int, float, bool, type(None)})
_JSON = _SCALARS | {dict, list}


class Unreadable(Exception):
    """A request holds a value the guardrail cannot read; the message names where and what it is."""


def is_bookkeeping(key: str, source: Mapping[str, Any]) -> bool:
    """Whether ``source[key]`` is LiteLLM's own rather than the call's content.

    ``metadata`` is LiteLLM's (with copies of the headers) on routes that keep LiteLLM's metadata
    there; where LiteLLM keeps its own in ``litellm_metadata`` (``/v1/messages``, ``/v1/responses``),
    ``metadata`` is the client's and LiteLLM sends it to the provider, so it is checked.
    """
    if key in BOOKKEEPING:
        return True
    if key == "metadata":
        return "litellm_metadata" not in source
    return key in LIVE_OBJECTS and type(source[key]) not in _JSON


def content(source: Mapping[str, Any]) -> dict[str, Any]:
    """``source`` less LiteLLM's bookkeeping, as it is (not yet made plain)."""
    return {str(key): value for key, value in source.items() if not is_bookkeeping(str(key), source)}


def request_body(source: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """``source`` less LiteLLM's bookkeeping, made plain by :func:`cleaned`."""
    body = cleaned(content(source), strict=strict)
    if not isinstance(body, dict):
        return {}
    if strict:
        for key in TOKEN_FIELDS:
            if _token_ids(body.get(key)):
                raise Unreadable(
                    f"the request's {key} is given as token ids; which text they stand for depends on the "
                    "model's tokenizer, so they cannot be checked (send the text instead)"
                )
    return body


# Fields a text completion or an embedding may give as token ids instead of text.
TOKEN_FIELDS = ("prompt", "input")


def _token_ids(value: Any) -> bool:
    """Whether ``value`` is token ids: a list holding a number at any depth of lists. Floats and
    booleans count: a lax server turns ``15339.0`` and ``true`` into token ids."""
    stack = [value] if isinstance(value, list) else []
    while stack:
        for item in stack.pop():
            if isinstance(item, list):
                stack.append(item)
            elif isinstance(item, int | float):
                return True
    return False


def cleaned(value: Any, *, strict: bool = True) -> Any:
    """``value`` as plain JSON data with credentials redacted and attachments fingerprinted.

    A value that cannot be read raises :class:`Unreadable` when ``strict`` (a check must not pass
    what it could not read); otherwise it is recorded as ``{"unreadable": "<type>"}`` (a record is
    kept whatever it holds). Iterative: each container is built empty, put in its place, then filled
    as the stack unwinds, so key order is kept and depth costs no Python stack.
    """
    root: list[Any] = [None]
    # (container, slot, value, where, under a credential key): inside a credential, scalars are
    # redacted (prose excepted, ``redact.hidden``) at any depth.
    stack: list[tuple[Any, Any, Any, str, bool]] = [(root, 0, value, "", False)]
    while stack:
        target, slot, item, where, secret = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            target[slot] = _scalar(item) if secret else item
        elif kind is dict or isinstance(item, Mapping):
            summary = attachments.summary_of(item) if "type" in item or "data" in item else None
            beside = _beside_bytes(item, summary) if summary is not None else None
            if summary is not None and beside is not None:
                # What the part holds beside its bytes (an image's ``detail``, a sibling ``text``)
                # goes to the model too, so it is kept and read.
                target[slot] = summary
                for name, child in beside.items():
                    summary[name] = None
                    stack.append((summary, name, child, f"{where}.{name}" if where else name, secret))
                continue
            out: dict[str, Any] = {}
            target[slot] = out
            pair = "value" in item and _names_credential(item)
            for key, child in item.items():
                name = key if type(key) is str else str(key)
                found = credential(name)
                inside = secret or (
                    (found != "none" and (found == "any" or not isinstance(child, Mapping)))
                    or (pair and name == "value")
                )
                if type(child) in _SCALARS:
                    out[name] = _scalar(child) if inside else child
                else:
                    out[name] = None
                    stack.append((out, name, child, f"{where}.{name}" if where else name, inside))
        elif kind is list or isinstance(item, list | tuple):
            items: list[Any] = [None] * len(item)
            target[slot] = items
            for index, child in enumerate(item):
                if type(child) in _SCALARS:
                    items[index] = _scalar(child) if secret else child
                else:
                    stack.append((items, index, child, f"{where}[{index}]", secret))
        else:
            fields = _fields(item)
            if fields is not None:
                stack.append((target, slot, fields, where, secret))
            else:
                leaf = _leaf(item, where, strict)
                target[slot] = _scalar(leaf) if secret and type(leaf) in _SCALARS else leaf
    return root[0]


def _scalar(value: Any) -> Any:
    """A JSON scalar under a credential key as it may leave the process: text and numbers redacted
    (but prose); None and booleans say nothing."""
    return value if value is None or type(value) is bool else hidden(value)


# Where an attachment part keeps its bytes (``attachments.summary_of`` read them from there).
_BYTES_AT = (
    ("image_url", "url"),
    ("image_url",),
    ("input_audio", "data"),
    ("file", "file_data"),
    ("file_data",),
    ("document_url",),
    ("source", "data"),
    ("data",),
)


# What an attachment says of its bytes beside them, which its summary says already.
_DESCRIBED = (
    "type",
    "format",
    "filename",
    "document_name",
    "media_type",
    "mime_type",
    "mimeType",
    "display_name",
    "displayName",
)


def _beside_bytes(part: Mapping[Any, Any], summary: dict[str, Any]) -> dict[str, Any] | None:
    """``part`` less its ``type`` and the string that held its bytes (empty containers dropped, and
    what the summary already says); None when a key left would take a summary key's name with
    another value (then the part is not summarized but read whole, bytes and all)."""
    rest = {str(key): value for key, value in part.items() if key != "type"}
    for path in _BYTES_AT:
        holder: dict[str, Any] = rest
        for name in path[:-1]:
            inner = holder.get(name)
            if not isinstance(inner, Mapping):
                break
            holder[name] = holder = {str(key): value for key, value in inner.items()}
        else:
            if isinstance(holder.get(path[-1]), str):
                del holder[path[-1]]
                for name in _DESCRIBED:
                    holder.pop(name, None)
                if len(path) > 1 and not holder:
                    del rest[path[0]]
                break
    if rest.get("title") == summary.get("filename"):
        rest.pop("title", None)
    for key in list(rest):
        if key in summary:
            if rest[key] != summary[key]:
                return None
            del rest[key]
    return rest


def _names_credential(item: Mapping[Any, Any]) -> bool:
    """Whether ``item`` is a header as a name/value pair naming a credential
    (``{"name": "Authorization", "value": "Bearer ..."}``); the caller has seen its ``value``."""
    name = item.get("name", item.get("key"))
    return isinstance(name, str) and credential(name) != "none"


def _fields(item: Any) -> dict[str, Any] | None:
    """The fields of a pydantic model or a dataclass instance, to be read like a dict; else None."""
    if isinstance(item, BaseModel):
        return item.model_dump()
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return {field.name: getattr(item, field.name) for field in dataclasses.fields(item)}
    return None


def _leaf(item: Any, where: str, strict: bool) -> Any:
    """A value that is neither JSON, a container nor a record of fields: a file's fingerprint, a JSON
    type's subclass (an enum member) as its plain value, else :class:`Unreadable` (or, not
    ``strict``, its type's name)."""
    raw = _bytes_of(item)
    if raw is not None:
        filename = getattr(item, "filename", None) or getattr(item, "name", None)
        return attachments.fingerprint("file", raw, filename=filename)
    if isinstance(item, str):
        return str.__str__(item)
    if isinstance(item, int):
        return int(item)
    if isinstance(item, float):
        return float(item)
    if strict:
        raise Unreadable(f"the request's {where or 'body'} is a {type(item).__qualname__}, which cannot be read")
    return {"unreadable": type(item).__qualname__}


def _bytes_of(item: Any) -> bytes | None:
    """The bytes of raw bytes or of a file (a seekable file object, or an upload that wraps one, such
    as FastAPI's ``UploadFile``), read and put back where it was; None for anything else."""
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    if isinstance(item, io.BytesIO):
        return item.getvalue()
    wrapped = getattr(item, "file", None)
    file = item if isinstance(item, io.IOBase) else wrapped if isinstance(wrapped, io.IOBase) else None
    if file is None or not file.seekable():
        return None
    position = file.tell()
    try:
        file.seek(0)
        raw = file.read()
    finally:
        file.seek(position)
    return raw if isinstance(raw, bytes) else str(raw).encode(errors="surrogatepass")
