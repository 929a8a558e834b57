"""The guardrail class as LiteLLM builds it: config keys, env fallbacks and start-up errors."""

from __future__ import annotations

from typing import Any

import pytest
from litellm.types.guardrails import LitellmParams

from akto_hook import AktoGuardrail
from akto_ingest.errors import ConfigError

BASE = {"guardrail_name": "akto-guard", "event_hook": ["pre_call", "post_call"], "default_on": False}
GOOD = {"akto_base_url": "http://akto.internal:9090", "akto_api_key": "akto-secret"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("AKTO_GUARDRAIL_API_BASE", "AKTO_API_KEY", "AKTO_ON_FLAGGED", "REDIS_URL", "AKTO_QUEUE_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AKTO_SPOOL_DIR", str(tmp_path / "spool"))


def build(**params: Any) -> AktoGuardrail:
    return AktoGuardrail(**BASE, **params)


def test_spec_defaults() -> None:
    guard = build(**GOOD)
    assert guard.settings.on_flagged == "block"
    assert guard.settings.unreachable_fallback == "fail_closed"
    assert guard.settings.guardrail_timeout == 5
    # The spec's config has no default_on; every request is checked unless scoped.
    assert guard.default_on is True


def test_akto_scope_requested_turns_default_on_off() -> None:
    assert build(**GOOD, akto_scope="requested").default_on is False


def test_env_variables_supply_url_key_and_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKTO_GUARDRAIL_API_BASE", "https://akto.example")
    monkeypatch.setenv("AKTO_API_KEY", "from-env")
    monkeypatch.setenv("AKTO_ON_FLAGGED", "monitor")
    guard = build()
    assert guard.akto.akto_base_url == "https://akto.example"
    assert guard.akto.akto_api_key.get_secret_value() == "from-env"
    assert guard.settings.on_flagged == "monitor"


def test_config_on_flagged_other_than_litellms_default_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # "monitor" is not LiteLLM's default, so the user wrote it: it beats the environment.
    monkeypatch.setenv("AKTO_ON_FLAGGED", "block")
    assert LitellmParams.model_fields["on_flagged"].default != "monitor"
    assert build(**GOOD, on_flagged="monitor").settings.on_flagged == "monitor"


def test_env_wins_when_litellm_filled_in_its_own_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # The installed LiteLLM types on_flagged with a default and passes it even when config.yaml
    # omits the key, so that value cannot be told from the user's: the environment decides.
    litellm_default = LitellmParams.model_fields["on_flagged"].default
    assert litellm_default == "block"
    monkeypatch.setenv("AKTO_ON_FLAGGED", "monitor")
    assert build(**GOOD, on_flagged=litellm_default).settings.on_flagged == "monitor"
    monkeypatch.delenv("AKTO_ON_FLAGGED")
    assert build(**GOOD, on_flagged=litellm_default).settings.on_flagged == "block"


def test_unrelated_litellm_kwargs_are_accepted() -> None:
    # LiteLLM passes many other vendors' defaults to every guardrail class.
    guard = build(**GOOD, unreachable_fallback="fail_open", fail_on_error=True, presidio_language="en", mask=False)
    assert guard.settings.unreachable_fallback == "fail_open"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"akto_api_key": "k"}, "akto_base_url (env AKTO_GUARDRAIL_API_BASE) is required"),
        ({"akto_base_url": "http://a"}, "akto_api_key (env AKTO_API_KEY) is required"),
        ({**GOOD, "akto_base_url": "akto.internal"}, "akto_base_url (env AKTO_GUARDRAIL_API_BASE): must be an http"),
        ({**GOOD, "on_flagged": "log"}, "on_flagged (env AKTO_ON_FLAGGED): Input should be 'block' or 'monitor'"),
        (
            {**GOOD, "unreachable_fallback": "maybe"},
            "unreachable_fallback: Input should be 'fail_closed' or 'fail_open'",
        ),
        ({**GOOD, "guardrail_timeout": 0}, "guardrail_timeout: Input should be greater than 0"),
        ({**GOOD, "guardrail_timeout": "soon"}, "guardrail_timeout: Input should be a valid number"),
        ({**GOOD, "redis_url": "localhost:6379"}, "redis_url (env REDIS_URL): must be a redis://"),
    ],
)
def test_bad_config_fails_at_load_naming_the_key(params: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(**params)
    assert expected in str(caught.value)
    # Not a ValueError: LiteLLM would skip the guardrail and start the proxy unguarded.
    assert not isinstance(caught.value, ValueError | TypeError)
