"""Attachments in a request body (images, audio, files): recorded as a fingerprint, never as bytes.

The content parts that can carry bytes inline:

  OpenAI chat      ``image_url`` (a ``data:`` URL), ``input_audio``, ``file`` (``file_data``)
  Anthropic        ``image`` and ``document`` with a ``base64`` source
  Responses API    ``input_image`` (a ``data:`` URL), ``input_file`` (``file_data``)
  OCR              ``document_url`` (a ``data:`` URL)

:func:`summarized` replaces each one, wherever it sits (inside ``tool_result`` blocks too), with
``{"type", "size", "sha256"}`` (the size and SHA-256 of the decoded bytes, plus ``media_type`` and
``filename`` when the client gave them), so a record stays small and holds no one's file. What is not
bytes stays as it is: a plain http(s) URL, an uploaded ``file_id``, a document given as text. A text
file (``text/*``, JSON, XML, YAML) is a prompt the model reads: its summary keeps its ``text``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mimetypes
import posixpath
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes, urlparse

ATTACHMENT_TYPES = frozenset(
    {"image_url", "input_audio", "file", "image", "document", "input_image", "input_file", "document_url"}
)

_URL_SAFE = str.maketrans("-_", "+/")


def summary_of(value: Mapping[str, Any]) -> dict[str, Any] | None:
    """The summary of ``value`` when it is an attachment that carries bytes inline (a content part
    of :data:`ATTACHMENT_TYPES`, or Gemini's ``inline_data`` blob), else None."""
    if value.get("type") in ATTACHMENT_TYPES:
        return _summary(value)
    if _is_blob(value):
        media_type = value.get("mime_type", value.get("mimeType"))
        return fingerprint("inline_data", _b64_bytes(value["data"]), media_type, value.get("display_name"))
    return None


SUMMARY_KEYS = frozenset({"type", "size", "sha256", "media_type", "filename"})


# Gemini's ``inline_data`` / ``inlineData`` blob: base64 ``data`` with its media type.
INLINE_DATA_KEYS = frozenset({"data", "mime_type", "mimeType", "display_name", "displayName"})

# MCP content blocks that carry bytes: ``image`` and ``audio`` (``data``), ``resource`` (``resource.blob``).
MCP_TYPES = frozenset({"audio", "resource"})


def summarized_response(body: Mapping[str, Any]) -> dict[str, Any]:
    """A response body with the bytes it can carry replaced by their summaries: audio a chat model
    answers with (``choices[].message.audio.data``), an image the Responses API generated
    (``image_generation_call`` ``result``), and MCP content blocks in a tool's result."""
    out: dict[str, Any] = _walk(dict(body), mcp=True)
    for choice in out.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        audio = message.get("audio") if isinstance(message, dict) else None
        if isinstance(audio, dict) and isinstance(audio.get("data"), str):
            audio["data"] = fingerprint("audio", _b64_bytes(audio["data"]))
    for item in out.get("output") or ():
        generated = isinstance(item, dict) and item.get("type") == "image_generation_call"
        if generated and isinstance(item.get("result"), str):
            item["result"] = fingerprint("image", _b64_bytes(item["result"]))
    return out


def is_summary(value: Any) -> bool:
    """True for what :func:`summarized` put in an attachment's place (and nothing else: a part with
    any other key, such as text, is not one)."""
    return (
        isinstance(value, Mapping)
        and value.keys() <= SUMMARY_KEYS
        and value.get("type") in ATTACHMENT_TYPES | MCP_TYPES | {"inline_data", "file"}
        and isinstance(value.get("sha256"), str)
        and isinstance(value.get("size"), int)
    )


def _walk(value: Any, mcp: bool = False) -> Any:
    if isinstance(value, list):
        return [_walk(item, mcp) for item in value]
    if not isinstance(value, Mapping):
        return value
    summary = summary_of(value)
    if summary is not None:
        return summary
    if mcp and value.get("type") in MCP_TYPES | {"image"}:
        summary = _mcp_summary(value)
        if summary is not None:
            return summary
    return {key: _walk(item, mcp) for key, item in value.items()}


def _mcp_summary(block: Mapping[str, Any]) -> dict[str, Any] | None:
    """The summary of an MCP content block that carries bytes, or None."""
    kind = str(block["type"])
    if kind == "resource":
        resource = block.get("resource")
        if isinstance(resource, Mapping) and isinstance(resource.get("blob"), str):
            uri = resource.get("uri")
            name = posixpath.basename(urlparse(uri).path) if isinstance(uri, str) else None
            return fingerprint(kind, _b64_bytes(resource["blob"]), resource.get("mimeType"), name)
        return None
    if isinstance(block.get("data"), str):
        return fingerprint(kind, _b64_bytes(block["data"]), block.get("mimeType"))
    return None


def _summary(part: Mapping[str, Any]) -> dict[str, Any] | None:
    """The summary of one attachment part, or None when it carries no bytes inline."""
    kind = str(part["type"])
    if kind in ("image_url", "input_image"):
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, Mapping) else url
        return _from_data_url(kind, url)
    if kind == "input_audio":
        audio = part.get("input_audio")
        if isinstance(audio, Mapping) and isinstance(audio.get("data"), str):
            fmt = audio.get("format")
            return fingerprint(kind, _b64_bytes(audio["data"]), f"audio/{fmt}" if isinstance(fmt, str) else None)
        return None
    if kind == "file":
        file = part.get("file")
        if isinstance(file, Mapping):
            return _from_data_url(kind, file.get("file_data"), file.get("filename"))
        return None
    if kind == "input_file":
        return _from_data_url(kind, part.get("file_data"), part.get("filename"))
    if kind == "document_url":
        return _from_data_url(kind, part.get("document_url"), part.get("document_name"))
    source = part.get("source")
    # Anthropic image/document: only a base64 source is bytes (url, text and file sources are not).
    if isinstance(source, Mapping) and source.get("type") == "base64" and isinstance(source.get("data"), str):
        return fingerprint(kind, _b64_bytes(source["data"]), source.get("media_type"), part.get("title"))
    return None


def _from_data_url(kind: str, value: Any, filename: Any = None) -> dict[str, Any] | None:
    """A ``data:`` URL or bare base64 as a summary; None for a plain http(s) URL or nothing at all."""
    if not isinstance(value, str) or not value:
        return None
    if value[:7].lower() == "http://" or value[:8].lower() == "https://":
        return None
    if value[:5].lower() == "data:" and "," in value:
        header, data = value[5:].split(",", 1)
        params = header.split(";")
        media_type = params[0] or None
        raw = _b64_bytes(data) if params[-1].strip().lower() == "base64" else unquote_to_bytes(data)
        return fingerprint(kind, raw, media_type, filename)
    return fingerprint(kind, _b64_bytes(value), None, filename)


def _b64_bytes(data: str) -> bytes:
    """Decoded base64, forgiving line breaks, missing padding and the URL-safe alphabet; text that is
    not base64 at all is fingerprinted as it is."""
    compact = "".join(data.split()).translate(_URL_SAFE)
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        return data.encode(errors="surrogatepass")


def fingerprint(kind: str, raw: bytes, media_type: Any = None, filename: Any = None) -> dict[str, Any]:
    """What a record and a check keep of ``raw``: its kind, size and SHA-256 (and the media type and
    file name when given), never the bytes."""
    summary: dict[str, Any] = {"type": kind, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    if isinstance(media_type, str) and media_type:
        summary["media_type"] = media_type
    if isinstance(filename, str) and filename:
        summary["filename"] = filename
    text = _text_of(raw, media_type, filename)
    if text is not None:
        summary["text"] = text
    return summary


# Media types a model reads as text: such a file is a prompt, so its text is kept and checked.
_TEXT_TYPES = frozenset({"application/json", "application/xml", "application/yaml", "application/x-yaml"})


def _text_of(raw: bytes, media_type: Any, filename: Any) -> str | None:
    """The text of a text file (by its media type, else its file name's), or None."""
    if not isinstance(media_type, str) or not media_type:
        media_type = mimetypes.guess_type(filename)[0] if isinstance(filename, str) and filename else None
    if not isinstance(media_type, str):
        return None
    kind = media_type.split(";", 1)[0].strip().lower()
    textual = kind.startswith("text/") or kind in _TEXT_TYPES or kind.endswith(("+json", "+xml"))
    return raw.decode("utf-8", errors="replace") if textual else None


# Akto's file guardrail knows three kinds; it picks its reader by the file name's extension.
FILE_KINDS = {
    "image_url": "image",
    "input_image": "image",
    "image": "image",
    "input_audio": "audio",
    "file": "file",
    "input_file": "file",
    "document": "file",
}


def for_file_check(body: Mapping[str, Any]) -> list[dict[str, str]]:
    """The attachments anywhere in ``body`` as Akto's file guardrail takes them:
    ``{"filename", "type", "content"}`` (standard base64) or ``{"filename", "type", "url"}``. A part
    that has neither bytes nor a URL (an uploaded ``file_id``) cannot be sent and is left out."""
    files: list[dict[str, str]] = []
    for part in _parts(body):
        found = _file(part, len(files))
        if found is not None:
            files.append(found)
    return files


def _parts(value: Any) -> Iterator[Mapping[str, Any]]:
    """The attachment parts and Gemini blobs in ``value``, in order, at any depth (iteratively)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, Mapping):
            if item.get("type") in ATTACHMENT_TYPES or _is_blob(item):
                yield item
            else:
                stack.extend(reversed(list(item.values())))


def _is_blob(value: Mapping[str, Any]) -> bool:
    media_type = value.get("mime_type", value.get("mimeType"))
    return isinstance(value.get("data"), str) and isinstance(media_type, str) and value.keys() <= INLINE_DATA_KEYS


def _file(part: Mapping[str, Any], index: int) -> dict[str, str] | None:
    if _is_blob(part):
        return _blob_file(part, index)
    kind = str(part["type"])
    name: Any = None
    media_type: Any = None
    data: Any = None
    url: Any = None
    if kind in ("image_url", "input_image"):
        found = part.get("image_url")
        url = found.get("url") if isinstance(found, Mapping) else found
    elif kind == "input_audio":
        audio = part.get("input_audio")
        if isinstance(audio, Mapping):
            data, fmt = audio.get("data"), audio.get("format")
            # The format is the extension Akto's reader goes by (wav, mp3).
            name = f"attachment-{index}.{fmt}" if isinstance(fmt, str) and fmt else None
    elif kind == "file":
        file = part.get("file")
        if isinstance(file, Mapping):
            url, name = file.get("file_data"), file.get("filename")
    elif kind == "input_file":
        url, name = part.get("file_data") or part.get("file_url"), part.get("filename")
    else:
        source = part.get("source")
        source = source if isinstance(source, Mapping) else {}
        name, media_type = part.get("title"), source.get("media_type")
        if source.get("type") == "base64":
            data = source.get("data")
        elif source.get("type") == "url":
            url = source.get("url")
    if isinstance(url, str) and url[:5].lower() == "data:" and "," in url:
        header, payload = url[5:].split(",", 1)
        params = header.split(";")
        media_type = params[0] or media_type
        raw = _b64_bytes(payload) if params[-1].strip().lower() == "base64" else unquote_to_bytes(payload)
        data, url = base64.b64encode(raw).decode(), None
    elif isinstance(url, str) and url and not url.lower().startswith(("http://", "https://")):
        data, url = url, None  # bare base64 in a file_data field
    out = {"filename": _filename(name, index, media_type, url), "type": FILE_KINDS[kind]}
    if isinstance(data, str) and data:
        out["content"] = base64.b64encode(_b64_bytes(data)).decode()
    elif isinstance(url, str) and url:
        out["url"] = url
    else:
        return None
    return out


def _blob_file(blob: Mapping[str, Any], index: int) -> dict[str, str]:
    """A Gemini ``inline_data`` blob as a file for Akto's file guardrail: its kind from the media type."""
    media_type = str(blob.get("mime_type", blob.get("mimeType")))
    major = media_type.split("/")[0]
    filename = _filename(blob.get("display_name") or blob.get("displayName"), index, media_type, None)
    content = base64.b64encode(_b64_bytes(str(blob["data"]))).decode()
    return {"filename": filename, "type": major if major in ("image", "audio") else "file", "content": content}


def _filename(name: Any, index: int, media_type: Any, url: Any) -> str:
    """The client's file name, else the URL's, with an extension from the media type when it has none."""
    stem = posixpath.basename(name.strip()) if isinstance(name, str) else ""
    if not stem and isinstance(url, str):
        stem = posixpath.basename(urlparse(url).path)
    stem = stem or f"attachment-{index}"
    guessed = mimetypes.guess_extension(media_type.split(";")[0].strip()) if isinstance(media_type, str) else None
    return stem if posixpath.splitext(stem)[1] or not guessed else stem + guessed
