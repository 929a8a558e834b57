"""A fake OpenAI-compatible model server: the LLM on a request path, with a configurable delay.

LiteLLM's ``mock_response`` answers inside the proxy at once, which hides everything that runs
concurrently with a real LLM call (``mode: during_call``). This server answers
``POST /v1/chat/completions`` (and ``POST /v1/completions``, text completions, and
``POST /v1/responses``, OpenAI's Responses API, which LiteLLM calls natively for an ``openai/``
model) after ``delay_ms``, streamed (server-sent events) or not, and keeps what it received so a
test can see what reached the "provider". Point a LiteLLM model at it::

    {"model": "openai/fake", "api_base": "http://127.0.0.1:PORT/v1", "api_key": "unused"}

Run it as a process (``python tests/fake_llm.py --port 8788 --delay-ms 300``) and drive it over
``/_admin/config`` (``delay_ms``, ``reply``, ``echo``, ``chunks``, ``function_call``),
``/_admin/requests`` and ``/_admin/reset``.
With ``echo`` on, the reply is the last user message, so a test can trace text through the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_REPLY = "Hello from the fake model"
# Received bodies kept for /_admin/requests; bounded so a benchmark's load cannot grow it without end.
KEEP_REQUESTS = 1000


@dataclass
class Settings:
    delay_ms: int = 0
    reply: str = DEFAULT_REPLY
    echo: bool = False
    chunks: int = 4  # content pieces in a streamed answer, after the role chunk
    # Answer with a legacy ``function_call`` (the ``functions`` parameter) whose arguments are the
    # reply, instead of text.
    function_call: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    served: int = 0


def _configure(settings: Settings, updates: dict[str, Any]) -> None:
    for name, value in updates.items():
        if name in ("delay_ms", "chunks") and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            setattr(settings, name, value)
        elif name == "reply" and isinstance(value, str):
            settings.reply = value
        elif name in ("echo", "function_call") and isinstance(value, bool):
            setattr(settings, name, value)
        else:
            raise ValueError(f"bad setting {name}={value!r}")


def _reply_text(settings: Settings, body: dict[str, Any]) -> str:
    if not settings.echo:
        return settings.reply
    users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    return content if isinstance(content, str) else json.dumps(content)


FUNCTION_NAME = "lookup"


def _completion(model: str, text: str, function_call: bool = False) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if function_call:
        message = {"role": "assistant", "content": None, "function_call": {"name": FUNCTION_NAME, "arguments": text}}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "function_call" if function_call else "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _text_completion(cid: str, model: str, text: str, finish: str | None) -> dict[str, Any]:
    """A text completion (``/v1/completions``), or one chunk of its stream."""
    return {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def _pieces(text: str, n: int) -> list[str]:
    if n <= 1 or len(text) <= 1:
        return [text]
    size = -(-len(text) // n)
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _received(request: web.Request, settings: Settings) -> dict[str, Any]:
    """A model request's body, kept for ``/_admin/requests`` and answered after ``delay_ms``. A query
    string is kept with it (``_query``), and a body that is not JSON as its text (``_raw``, answered
    400): what reached the model, whatever its shape."""
    raw = await request.read()
    query = {"_query": dict(request.query)} if request.query else {}
    try:
        body: dict[str, Any] = json.loads(raw)
    except ValueError:
        settings.requests.append({"_raw": raw.decode(errors="replace"), **query})
        raise web.HTTPBadRequest(text="the fake model takes JSON bodies") from None
    settings.requests.append({**body, **query} if query else body)
    del settings.requests[:-KEEP_REQUESTS]
    if settings.delay_ms:
        await asyncio.sleep(settings.delay_ms / 1000)
    settings.served += 1
    return body


def app(settings: Settings) -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        body = await _received(request, settings)
        model = str(body.get("model") or "fake")
        text = _reply_text(settings, body)
        if not body.get("stream"):
            return web.json_response(_completion(model, text, settings.function_call))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        if settings.function_call:
            first = {"role": "assistant", "content": None, "function_call": {"name": FUNCTION_NAME, "arguments": ""}}
            await resp.write(_chunk(cid, model, first))
            for piece in _pieces(text, settings.chunks):
                await resp.write(_chunk(cid, model, {"function_call": {"arguments": piece}}))
            await resp.write(_chunk(cid, model, {}, "function_call"))
        else:
            await resp.write(_chunk(cid, model, {"role": "assistant", "content": ""}))
            for piece in _pieces(text, settings.chunks):
                await resp.write(_chunk(cid, model, {"content": piece}))
            await resp.write(_chunk(cid, model, {}, "stop"))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def admin_config(request: web.Request) -> web.Response:
        try:
            _configure(settings, await request.json())
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"delay_ms": settings.delay_ms, "reply": settings.reply, "echo": settings.echo})

    async def admin_requests(request: web.Request) -> web.Response:
        return web.json_response({"served": settings.served, "requests": settings.requests})

    async def admin_reset(request: web.Request) -> web.Response:
        settings.requests.clear()
        settings.served = 0
        return web.json_response({"ok": True})

    async def text_completions(request: web.Request) -> web.StreamResponse:
        body = await _received(request, settings)
        model = str(body.get("model") or "fake")
        prompt = body.get("prompt")
        text = (prompt if isinstance(prompt, str) else json.dumps(prompt)) if settings.echo else settings.reply
        cid = f"cmpl-{uuid.uuid4().hex}"
        if not body.get("stream"):
            return web.json_response(_text_completion(cid, model, text, "stop"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in _pieces(text, settings.chunks):
            await resp.write(b"data: " + json.dumps(_text_completion(cid, model, piece, None)).encode() + b"\n\n")
        await resp.write(b"data: " + json.dumps(_text_completion(cid, model, "", "stop")).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    application = web.Application()
    for path in ("/v1/chat/completions", "/chat/completions"):
        application.router.add_post(path, completions)
    for path in ("/v1/completions", "/completions"):
        application.router.add_post(path, text_completions)
    add_responses_route(application, settings)
    add_other_routes(application, settings)
    application.router.add_post("/_admin/config", admin_config)
    application.router.add_get("/_admin/requests", admin_requests)
    application.router.add_post("/_admin/reset", admin_reset)
    return application


def _responses_input_text(body: dict[str, Any]) -> str:
    """The Responses API request's last user text: ``input`` as a string, or its last user item."""
    value = body.get("input")
    if isinstance(value, str):
        return value
    users = [i for i in value or [] if isinstance(i, dict) and i.get("role", "user") == "user"]
    content = users[-1].get("content") if users else ""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _response_object(model: str, text: str, rid: str) -> dict[str, Any]:
    message = {
        "id": f"msg_{rid}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    return {
        "id": f"resp_{rid}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "output": [message],
        "usage": {"input_tokens": 10, "output_tokens": 10, "total_tokens": 20},
    }


def _event(kind: str, data: dict[str, Any], number: int) -> bytes:
    line = json.dumps({"type": kind, **data, "sequence_number": number})
    return f"event: {kind}\ndata: {line}\n\n".encode()


def add_responses_route(application: web.Application, settings: Settings) -> None:
    """``POST /v1/responses`` (OpenAI's Responses API), streamed as its events or not; what it received
    is kept beside the chat requests."""

    async def responses(request: web.Request) -> web.StreamResponse:
        body = await _received(request, settings)
        model = str(body.get("model") or "fake")
        text = _responses_input_text(body) if settings.echo else settings.reply
        rid = uuid.uuid4().hex
        done = _response_object(model, text, rid)
        if not body.get("stream"):
            return web.json_response(done)
        item = {**done["output"][0], "status": "in_progress", "content": []}
        at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": {**done, "status": "in_progress", "output": []}}),
            ("response.output_item.added", {"output_index": 0, "item": item}),
            ("response.content_part.added", {**at, "part": {"type": "output_text", "text": "", "annotations": []}}),
            *(("response.output_text.delta", {**at, "delta": piece}) for piece in _pieces(text, settings.chunks)),
            ("response.output_text.done", {**at, "text": text}),
            ("response.output_item.done", {"output_index": 0, "item": done["output"][0]}),
            ("response.completed", {"response": done}),
        ]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for number, (kind, data) in enumerate(events):
            await resp.write(_event(kind, data, number))
        await resp.write_eof()
        return resp

    for path in ("/v1/responses", "/responses"):
        application.router.add_post(path, responses)


def add_other_routes(application: web.Application, settings: Settings) -> None:
    """The other model APIs LiteLLM routes (embeddings, image generation and edits, audio
    transcription and Cohere's rerank), each answered with a minimal valid body; what they received
    is kept beside the chat requests (an upload's form fields, with the file's size)."""

    async def form(request: web.Request) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for name, value in (await request.post()).items():
            if isinstance(value, web.FileField):
                fields[name] = {"file_size": len(value.file.read())}
            else:
                fields[name] = value if isinstance(value, str) else {"size": len(value)}
        settings.requests.append(fields)
        del settings.requests[:-KEEP_REQUESTS]
        settings.served += 1
        return fields

    async def embeddings(request: web.Request) -> web.Response:
        body = await _received(request, settings)
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) else 1
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(count)]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": str(body.get("model") or "fake"),
                "usage": {"prompt_tokens": 10, "total_tokens": 10},
            }
        )

    async def images(request: web.Request) -> web.Response:
        await _received(request, settings)
        return web.json_response({"created": int(time.time()), "data": [{"url": "http://127.0.0.1/image.png"}]})

    async def transcription(request: web.Request) -> web.Response:
        await form(request)
        return web.json_response({"text": settings.reply})

    async def image_edit(request: web.Request) -> web.Response:
        await form(request)
        return web.json_response({"created": int(time.time()), "data": [{"url": "http://127.0.0.1/edited.png"}]})

    async def rerank(request: web.Request) -> web.Response:
        body = await _received(request, settings)
        documents = body.get("documents") or []
        results = [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(documents))]
        return web.json_response(
            {"id": uuid.uuid4().hex, "results": results, "meta": {"billed_units": {"search_units": 1}}}
        )

    for prefix in ("/v1", ""):
        application.router.add_post(f"{prefix}/embeddings", embeddings)
        application.router.add_post(f"{prefix}/images/generations", images)
        application.router.add_post(f"{prefix}/audio/transcriptions", transcription)
        application.router.add_post(f"{prefix}/images/edits", image_edit)
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        application.router.add_post(path, rerank)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--reply", default=DEFAULT_REPLY)
    args = parser.parse_args(argv)
    settings = Settings(delay_ms=args.delay_ms, reply=args.reply)
    web.run_app(app(settings), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
