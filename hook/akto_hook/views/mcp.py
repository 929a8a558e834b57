"""MCP tool calls through LiteLLM's MCP gateway, as Akto sees them: JSON-RPC ``tools/call`` on ``/mcp``.

LiteLLM 1.108.7 hands a guardrail an MCP tool call three ways, and each maps onto what the guardrail
already does for chat:

- ``pre_mcp_call`` (in ``mode``): ``async_pre_call_hook`` with ``call_type="call_mcp_tool"`` and a
  synthetic request (``mcp_server_name``, ``mcp_tool_name``, ``mcp_arguments``, and the request's
  ``litellm_logging_obj``). Block mode checks it inline, as a chat request is checked.
- The same hook with ``call_type="list_mcp_tools"`` for each tool of a ``tools/list``: the tool's
  description and input schema are checked (a block hides the tool from the listing); a listing is
  not a call, so it is never recorded.
- The logging callbacks, after the call, with ``call_type="call_mcp_tool"`` and
  ``mcp_tool_call_metadata`` (server, tool, arguments): one record of the call and its result.

A record is tagged with its server and tool in ``metadata`` (``mcp_server_name``, ``tool_name``);
``wire.envelope`` turns those into Akto's MCP tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from akto_ingest.config import OnFlagged
from akto_ingest.record import Record

from .. import views
from . import attachments, capture
from .capture import as_dict

MCP_PATH = "/mcp"
TOOL_CALL = "call_mcp_tool"
TOOL_LISTING = "list_mcp_tools"
MCP_CALL_TYPES = frozenset({TOOL_CALL, TOOL_LISTING})
# The mode entry that makes LiteLLM run the guardrail on a tool call before it is made.
PRE_MCP_CALL = "pre_mcp_call"
# LiteLLM reports a result with ``isError: true`` as a failure under this exception; the client
# still got the result (HTTP 200), so the record keeps it as a result.
TOOL_RESULT_ERROR = "MCPToolResultError"


def call_type_of(kwargs: Mapping[str, Any]) -> str:
    """The call type of a logging callback's ``kwargs`` ("" when it has none)."""
    call_type = kwargs.get("call_type") or as_dict(kwargs.get("standard_logging_object")).get("call_type")
    return str(getattr(call_type, "value", call_type) or "")


def is_mcp(call_type: Any) -> bool:
    """True for the call types of LiteLLM's MCP gateway (tool calls and tool listings)."""
    return str(getattr(call_type, "value", call_type)) in MCP_CALL_TYPES


def is_tool_call(call_type: Any) -> bool:
    """True for a tool call (``tools/call``), the one MCP call type that is recorded."""
    return str(getattr(call_type, "value", call_type)) == TOOL_CALL


def record_mode(on_flagged: OnFlagged, hooks: set[str]) -> OnFlagged:
    """The mode of a tool call's record: ``block`` (ingest only) when block mode checked it inline
    (``pre_mcp_call`` in ``mode``), else ``monitor``, so Akto still gives an unchecked call a verdict."""
    return "block" if on_flagged == "block" and PRE_MCP_CALL in hooks else "monitor"


def mode_warnings(on_flagged: OnFlagged, hooks: set[str]) -> list[str]:
    """What in ``mode`` does not do what it seems to for MCP tool calls."""
    warnings = []
    if "during_mcp_call" in hooks:
        warnings.append(
            "during_mcp_call is not supported (the tool would run before the verdict); "
            "use pre_mcp_call to check tool calls"
        )
    if "post_mcp_call" in hooks:
        warnings.append(
            "post_mcp_call does nothing here (LiteLLM runs it only for apply_guardrail guardrails); "
            "tool results are recorded after every call without it"
        )
    if on_flagged == "monitor" and PRE_MCP_CALL in hooks:
        warnings.append("on_flagged=monitor ignores pre_mcp_call; tool calls are recorded, never blocked")
    return warnings


def tool_call_body(tool: str, arguments: Any) -> dict[str, Any]:
    """A tool call as an MCP client sends it: a JSON-RPC ``tools/call`` request."""
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments or {}}}


def _tags(server: Any, tool: Any, call_type: str) -> dict[str, str]:
    return {"mcp_server_name": str(server or "unknown"), "tool_name": str(tool or "unknown"), "call_type": call_type}


def _with(record: Record, request_body: dict[str, Any], tags: Mapping[str, str], **update: Any) -> Record:
    fields = record.model_dump()
    # A tool's arguments can carry credentials (a token for the tool's own API): redacted as in any body.
    fields.update(path=MCP_PATH, method="POST", request_body=views.cleaned(request_body, strict=False), **update)
    fields["metadata"] = {**record.metadata, **tags}
    return Record.model_validate(fields)


def _pre_call_base(data: Mapping[str, Any]) -> Record:
    # The synthetic request has neither the call id nor the client's request; the request's own
    # logger has both, so the check, a blocked record and the call's record share one id.
    details = getattr(data.get("litellm_logging_obj"), "model_call_details", None)
    if isinstance(details, Mapping) and details.get("litellm_call_id"):
        return Record(**capture._from_log(details, "block"))
    return capture.from_request(data, "block")


def from_pre_call(data: Mapping[str, Any], call_type: Any) -> Record:
    """The record to check for LiteLLM's ``pre_mcp_call`` hook ``data``: the tool call, or for a
    ``tools/list`` the tool's definition (name, description, input schema)."""
    record = _pre_call_base(data)
    server, tool = data.get("mcp_server_name"), data.get("mcp_tool_name")
    if not is_tool_call(call_type):
        definition = {
            "name": tool,
            "description": data.get("mcp_tool_description") or "",
            "inputSchema": data.get("mcp_input_schema") or {},
        }
        body = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [definition]}}
        return _with(record, body, _tags(server, tool, "tool_discovery"))
    return _with(record, tool_call_body(str(tool), data.get("mcp_arguments")), _tags(server, tool, "tool_call"))


def _tool_call(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    slo_meta = as_dict(as_dict(kwargs.get("standard_logging_object")).get("metadata"))
    call = as_dict(kwargs.get("mcp_tool_call_metadata")) or as_dict(slo_meta.get("mcp_tool_call_metadata"))
    tags = _tags(call.get("mcp_server_name"), call.get("name"), "tool_call")
    if call.get("mcp_session_id"):
        tags["mcp_session_id"] = str(call["mcp_session_id"])
    return tool_call_body(tags["tool_name"], call.get("arguments")), tags


def _result(response: Any, logged: Any) -> dict[str, Any]:
    if hasattr(response, "model_dump"):
        # The wire names (structuredContent, isError), as the MCP client received them.
        dumped = response.model_dump(by_alias=True, mode="json", exclude_none=True)
        if isinstance(dumped, dict):
            return dumped
    return logged if isinstance(logged, dict) else {}


def from_success(kwargs: Mapping[str, Any], response: Any, mode: OnFlagged) -> Record:
    """The record of a completed tool call: the ``tools/call`` request and its JSON-RPC result."""
    record = capture.from_success(kwargs, response, mode)
    body, tags = _tool_call(kwargs)
    result = {"jsonrpc": "2.0", "id": 1, "result": _result(response, record.response_body)}
    return _with(record, body, tags, response_body=attachments.summarized_response(result))


def from_failure(kwargs: Mapping[str, Any], mode: OnFlagged) -> Record:
    """The record of a tool call that failed: a result with ``isError: true`` keeps status 200 (what
    the client got); a call refused or failed on the way keeps its error status."""
    record = capture.from_failure(kwargs, mode)
    body, tags = _tool_call(kwargs)
    exception = kwargs.get("exception")
    if type(exception).__name__ == TOOL_RESULT_ERROR:
        result = {"content": [{"type": "text", "text": str(exception)}], "isError": True}
        return _with(record, body, tags, status_code=200, response_body={"jsonrpc": "2.0", "id": 1, "result": result})
    return _with(record, body, tags)
