"""Checking a LiteLLM ``config.yaml``'s Akto guardrails before the proxy starts.

LiteLLM 1.108.7 types some of the spec's keys itself (``on_flagged``, ``unreachable_fallback``,
``guardrail_timeout``, ``file_guardrail_timeout``) and checks them before it loads the guardrail; a
bad value there makes it skip the guardrail and start the proxy without it, with one error line in
its log. The guardrail's own code never runs, so it cannot refuse to start. :func:`check_file`
validates every Akto guardrail's keys as the guardrail would and names the bad one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .config import GUARDRAIL_KEYS, AktoSettings, HookSettings, QueueSettings
from .errors import ConfigError

GUARDRAIL_CLASS = "AktoGuardrail"
PREFIX = "invalid Akto guardrail configuration: "
# LiteLLM's reference to an environment variable in config.yaml.
ENV_PREFIX = "os.environ/"
# What LiteLLM accepts for the spec's keys it checks itself (the rest it takes as they are).
LITELLM_CHECKS: dict[str, tuple[str, ...]] = {
    "on_flagged": ("block", "monitor", "inject_system_message", "mask"),
    "unreachable_fallback": ("fail_closed", "fail_open"),
}
# Values LiteLLM accepts (mask from 1.109 on) and hands on to the guardrail, whose own check names them.
NOT_OURS = ("inject_system_message", "mask")
LITELLM_INTS = ("guardrail_timeout", "file_guardrail_timeout")


def check_file(path: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """The names of the Akto guardrails in the LiteLLM config at ``path``, each checked; a
    :class:`ConfigError` naming the guardrail and the key for the first bad one."""
    try:
        import yaml
    except ImportError:
        raise ConfigError("checking a config.yaml needs PyYAML (installed with LiteLLM's proxy)") from None
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    guardrails = config.get("guardrails") if isinstance(config, dict) else None
    names = []
    for entry in guardrails if isinstance(guardrails, list) else []:
        params = entry.get("litellm_params") if isinstance(entry, dict) else None
        if not isinstance(params, dict) or not str(params.get("guardrail", "")).endswith(GUARDRAIL_CLASS):
            continue
        name = str(entry.get("guardrail_name") or GUARDRAIL_CLASS)
        try:
            check_params(params, os.environ if env is None else env)
        except ConfigError as exc:
            raise ConfigError(f"{PREFIX}guardrail {name!r}: {str(exc).removeprefix(PREFIX)}") from None
        names.append(name)
    return names


def check_params(params: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """Check one guardrail's ``litellm_params`` as LiteLLM and the guardrail would."""
    resolved = {key: _resolved(value, env) for key, value in params.items()}
    for key, allowed in LITELLM_CHECKS.items():
        value = resolved.get(key)
        if value is not None and value not in allowed:
            raise ConfigError(
                f"{key}: {value!r} is not one of {', '.join(a for a in allowed if a not in NOT_OURS)}; "
                "LiteLLM would start the proxy WITHOUT this guardrail"
            )
    for key in LITELLM_INTS:
        value = resolved.get(key)
        if value is not None and not _whole_number(value):
            raise ConfigError(
                f"{key}: {value!r} is not a whole number of seconds; "
                "LiteLLM would start the proxy WITHOUT this guardrail"
            )
    ours = {key: value for key, value in resolved.items() if key in GUARDRAIL_KEYS}
    AktoSettings.load(ours, env)
    QueueSettings.load(ours, env)
    HookSettings.load(ours, env)


def _resolved(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        return env.get(value.removeprefix(ENV_PREFIX))
    return value


def _whole_number(value: Any) -> bool:
    """Whether LiteLLM's ``int`` field takes ``value`` (pydantic's lax mode: ``2.0`` and ``"3"`` pass)."""
    try:
        _INT.validate_python(value)
    except ValidationError:
        return False
    return True


_INT = TypeAdapter(int)
