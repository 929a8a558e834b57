"""Credentials in a request body, found by key at any depth and never sent on.

A header is stripped by name when a record is made (``record.strip_credentials``); a body can carry
the same secrets anywhere: an MCP tool's ``headers`` in a Responses request, LiteLLM's client-side
credential params (``api_key``, ``aws_secret_access_key``, ``vertex_credentials``...), a tool's
``password`` argument. Their values are replaced by :data:`REDACTED` in what Akto checks and in the
record, so neither Akto, Redis, the spool, the dead letters nor a log line ever holds one.

Only text (and numbers) under such a key is a credential. An object or list under one is walked like
any other value: a JSON schema describing a ``password`` property is a schema, not a secret, and its
text is checked. LiteLLM's credential params are the exception: they are secrets whatever their form
(``vertex_credentials`` is a whole service-account object).
"""

from __future__ import annotations

import functools
from typing import Literal

REDACTED = "[redacted]"

# Keys whose value, whatever its form, is a credential: LiteLLM's client-side credential params.
CREDENTIAL_PARAMS = frozenset(
    {
        "api_key",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_bedrock_runtime_endpoint_api_key",
        "vertex_credentials",
        "vertex_ai_credentials",
        "azure_ad_token",
        "azure_api_key",
        "azure_client_secret",
        "client_secret",
        "private_key",
        "service_account_json",
        "watsonx_api_key",
    }
)

# Keys whose text value is a credential, after lower-casing and turning "-" into "_".
CREDENTIAL_KEYS = CREDENTIAL_PARAMS | frozenset(
    {
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "apikey",
        "x_api_key",
        "password",
        "passwd",
        "secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "bearer_token",
        "auth_token",
        "session_token",
        "credentials",
    }
)
CREDENTIAL_SUFFIXES = ("_api_key", "_apikey", "_secret", "_token", "_password", "_credentials", "_private_key")


Credential = Literal["any", "text", "none"]


@functools.lru_cache(maxsize=4096)
def credential(key: str) -> Credential:
    """Whether ``key`` holds a credential: ``any`` value (LiteLLM's credential params), a ``text``
    value only, or ``none``. Cached: a body's keys are mostly the same few names."""
    name = key.lower().replace("-", "_")
    if name in CREDENTIAL_PARAMS:
        return "any"
    if name in CREDENTIAL_KEYS or name.endswith(CREDENTIAL_SUFFIXES):
        return "text"
    return "none"
