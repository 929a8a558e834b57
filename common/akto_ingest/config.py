"""Configuration: the spec's keys and environment variables, validated once at start.

Each setting is read from LiteLLM's ``litellm_params`` (hook only) first, then from its environment
variable, then its default. Every invalid value raises :class:`ConfigError` naming the key, its
environment variable and what it accepts, so a bad config fails the proxy or the worker at start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Literal, Self
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .connections import REDIS_TIMEOUT_SECONDS, check_redis_url
from .errors import ConfigError

OnFlagged = Literal["block", "monitor"]
Fallback = Literal["fail_closed", "fail_open"]
DeliveryMode = Literal["record", "batch"]
Scope = Literal["all", "requested"]

# key -> environment variable; keys without one are config-only, as in the spec.
ENV_NAMES: dict[str, str] = {
    "akto_base_url": "AKTO_GUARDRAIL_API_BASE",
    "akto_api_key": "AKTO_API_KEY",
    "on_flagged": "AKTO_ON_FLAGGED",
    "redis_url": "REDIS_URL",
    "redis_timeout": "AKTO_REDIS_TIMEOUT",
    "queue_name": "AKTO_QUEUE_NAME",
    "akto_account_id": "AKTO_ACCOUNT_ID",
    "akto_vxlan_id": "AKTO_VXLAN_ID",
    "context_source": "AKTO_CONTEXT_SOURCE",
    "akto_metadata": "AKTO_METADATA",
    "tls_verify": "AKTO_TLS_VERIFY",
    "enqueue_timeout": "AKTO_ENQUEUE_TIMEOUT",
    "spool_dir": "AKTO_SPOOL_DIR",
    "spool_max_bytes": "AKTO_SPOOL_MAX_BYTES",
    "check_response": "AKTO_CHECK_RESPONSE",
    "file_guardrails": "AKTO_FILE_GUARDRAILS",
    "concurrency": "AKTO_WORKER_CONCURRENCY",
    "batch_size": "AKTO_BATCH_SIZE",
    "delivery_mode": "AKTO_DELIVERY_MODE",
    "delivery_timeout": "AKTO_DELIVERY_TIMEOUT",
    "retention_seconds": "AKTO_RETENTION_SECONDS",
    "backoff_base": "AKTO_BACKOFF_BASE",
    "backoff_max": "AKTO_BACKOFF_MAX",
    "metrics_port": "AKTO_WORKER_METRICS_PORT",
    "round_budget": "AKTO_WORKER_ROUND_BUDGET",
}


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def load(cls, params: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Self:
        """Build the settings from config params, then environment variables, then defaults."""
        params = params or {}
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for key in cls.model_fields:
            value = params.get(key)
            if value is None and key in ENV_NAMES:
                value = env.get(ENV_NAMES[key]) or None
            if value is not None:
                values[key] = value
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else "?"
        env = f" (env {ENV_NAMES[key]})" if key in ENV_NAMES else ""
        if err["type"] == "missing":
            problems.append(f"{key}{env} is required")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "<hidden>" if key == "akto_api_key" else repr(_mask_password(got))
        problems.append(f"{key}{env}: {msg}; got {shown}")
    return "invalid Akto guardrail configuration: " + "; ".join(problems)


def _mask_password(value: Any) -> Any:
    """A URL's password must not reach an error message or a log."""
    if not isinstance(value, str) or "@" not in value:
        return value
    parsed = urlparse(value)
    if parsed.password:
        return value.replace(f":{parsed.password}@", ":***@", 1)
    return value


def _http_url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class AktoSettings(_Settings):
    """Where Akto is and how records are labelled for it; shared by the hook and the worker."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    akto_base_url: str
    akto_api_key: SecretStr
    akto_account_id: str = "1000000"
    akto_vxlan_id: str = "0"
    context_source: Literal["AGENTIC", "ENDPOINT"] = "AGENTIC"
    akto_metadata: dict[str, Any] | None = None
    tls_verify: bool = True

    _check_url = field_validator("akto_base_url")(_http_url)

    @field_validator("akto_api_key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("akto_account_id", "akto_vxlan_id", mode="before")
    @classmethod
    def _digits(cls, value: Any) -> str:
        if not str(value).isdigit():
            raise ValueError("must be a whole number")
        return str(value)

    @field_validator("akto_metadata", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("must be a JSON object") from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object")
        return value


class QueueSettings(_Settings):
    """Where the queue lives (the hook and the worker must agree on both), and how long a Redis
    command may take."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = Field(default="akto:ingest", min_length=1)
    # Seconds a Redis command may wait for its reply before the client gives up on the connection and
    # reconnects (through Sentinel: to whatever the Sentinels now name as primary). A primary that
    # stops answering without closing its sockets (SIGSTOP, a partition) would hold it forever.
    redis_timeout: float = Field(default=REDIS_TIMEOUT_SECONDS, gt=0, le=300, allow_inf_nan=False)

    _check_redis = field_validator("redis_url")(check_redis_url)


class HookSettings(_Settings):
    """Settings only the LiteLLM-side hook uses."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    on_flagged: OnFlagged = "block"
    unreachable_fallback: Fallback = "fail_closed"
    guardrail_timeout: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    # Seconds the hook waits for Redis before it gives up on a record write; keeps Redis off the
    # request path's critical latency even when it hangs.
    enqueue_timeout: float = Field(default=0.05, gt=0, allow_inf_nan=False)
    akto_scope: Scope = "all"
    spool_dir: str | None = None
    spool_max_bytes: int = Field(default=1024**3, ge=1024 * 1024)
    # Block mode only, opt-in: also check the LLM's response inline before the client gets it.
    check_response: bool = False
    # Opt-in: send attachments to Akto's file check (newer Akto builds, file_guardrails=true).
    file_guardrails: bool = False
    file_guardrail_timeout: float = Field(default=10.0, gt=0, allow_inf_nan=False)

    @field_validator("on_flagged", mode="before")
    @classmethod
    def _not_mask(cls, value: Any) -> Any:
        # LiteLLM 1.109+ accepts on_flagged: mask for every guardrail and passes it on; here masking
        # is Akto's decision, not a mode (docs/decisions.md).
        if value == "mask":
            raise ValueError(
                "'mask' is not a mode of the Akto guardrail; accepted: block, monitor. Masking is Akto's "
                "decision: with block, a verdict that carries Akto's masked request is applied to it"
            )
        return value


class WorkerConfig(_Settings):
    """Settings only the worker uses."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    concurrency: int = Field(default=128, ge=1, le=10_000)
    batch_size: int = Field(default=100, ge=1, le=5_000)
    delivery_mode: DeliveryMode = "record"
    delivery_timeout: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    retention_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    backoff_base: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    backoff_max: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    metrics_port: int = Field(default=9191, ge=0, le=65535)
    # Seconds arq's poll or the collector may go without completing a round before /healthz fails.
    # A round includes the Redis client's retries, so this is also how long Redis may be away or
    # frozen before liveness fails: longer than a Sentinel failover (30 s to notice by default).
    round_budget: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False)


# The guardrail's own keys in LiteLLM's ``litellm_params`` (the rest are LiteLLM's).
GUARDRAIL_KEYS = frozenset(AktoSettings.model_fields) | set(QueueSettings.model_fields) | set(HookSettings.model_fields)
