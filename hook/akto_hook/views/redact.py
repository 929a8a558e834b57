"""Credentials in a request body, found by key at any depth and never sent on.

A header is stripped by name when a record is made (``record.strip_credentials``); a body can carry
the same secrets anywhere: an MCP tool's ``headers`` in a Responses request, LiteLLM's client-side
credential params (``api_key``, ``aws_secret_access_key``, ``vertex_credentials``...), a tool's
``password`` argument. Their values are replaced by :data:`REDACTED` in what Akto checks and in the
record, so neither Akto, Redis, the spool, the dead letters nor a log line ever holds one.

A key names a credential after trimming, lower-casing, ``-`` to ``_`` and camelCase to snake_case
(``Authorization ``, ``X-API-KEY``, ``accessToken``, ``AWSSecretAccessKey``). A header given as a
name/value pair (``{"name": "Authorization", "value": ...}``) is one too.

Text, numbers and lists of them under such a key are a credential; an object under one is walked like
any other value (a JSON schema describing a ``password`` property is a schema, not a secret, and its
text is checked). LiteLLM's credential params are secrets whatever their form (``vertex_credentials``
is a whole service-account object).

Prose is never a credential (:func:`is_prose`): a redacted value is a value Akto cannot check, and the
model reads an Anthropic ``tool_use`` input, a Gemini ``functionCall``'s args or an unknown message
field whatever its key is named. Text of three or more words, or with letters outside ASCII, is read
and checked wherever it is. A secret that is a passphrase of plain words reaches the check; one token
that is an instruction (``ignore-previous-instructions``) under a credential key does not.
"""

from __future__ import annotations

import functools
import re
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
        "api_keys",
        "secrets",
        "passwords",
        "cookies",
        "secret_key",
        "access_key",
        "subscription_key",
        "connection_string",
        "passphrase",
        "pwd",
    }
)
CREDENTIAL_SUFFIXES = (
    "_api_key",
    "_api_keys",
    "_apikey",
    "_secret",
    "_secrets",
    "_token",
    "_password",
    "_passwords",
    "_credentials",
    "_private_key",
    "_secret_key",
    "_access_key",
    "_subscription_key",
    "_connection_string",
)


Credential = Literal["any", "text", "none"]


_CAMEL = (re.compile(r"(?<=[a-z0-9])(?=[A-Z])"), re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])"))


@functools.lru_cache(maxsize=4096)
def credential(key: str) -> Credential:
    """Whether ``key`` holds a credential: ``any`` value (LiteLLM's credential params), a ``text``
    value only, or ``none``. Cached: a body's keys are mostly the same few names."""
    name = key.strip()
    for boundary in _CAMEL:
        name = boundary.sub("_", name)
    name = name.lower().replace("-", "_").replace(" ", "_")
    if name in CREDENTIAL_PARAMS:
        return "any"
    if name in CREDENTIAL_KEYS or name.endswith(CREDENTIAL_SUFFIXES):
        return "text"
    return "none"


_STRIP = "\"'`.,;:!?()[]{}"


def is_prose(text: str) -> bool:
    """Whether ``text`` reads as words rather than a token: three or more words of letters making
    at least half of it, or any letter outside ASCII. A key, a token, a cookie (``a=1; b=2``), an
    auth header (``Bearer sk-...``), a PEM block or a service account's JSON is none of these."""
    if not text.isascii():
        return any(char.isalpha() and not char.isascii() for char in text)
    tokens = text.split()
    if len(tokens) < 3:
        return False
    words = 0
    for token in tokens:
        word = token.strip(_STRIP)
        words += len(word) > 1 and word.isalpha()
    return words >= 3 and 2 * words >= len(tokens)


def hidden(value: str | int | float) -> str | int | float:
    """``value`` under a credential key as it may leave the process: :data:`REDACTED`, or prose as is."""
    return value if isinstance(value, str) and is_prose(value) else REDACTED
