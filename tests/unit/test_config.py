"""Configuration: the spec's keys, env variables and defaults, and errors that say what is wrong."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from akto_ingest.config import AktoSettings, HookSettings, QueueSettings, WorkerConfig
from akto_ingest.connections import SentinelTarget, parse_sentinel_url
from akto_ingest.errors import ConfigError

SECRET = "sk-akto-VERY-secret-0123456789"
GOOD = {"akto_base_url": "https://akto.example.com/", "akto_api_key": SECRET}


def config_error(cls: Any, params: Mapping[str, object], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        cls.load(params, env={} if env is None else env)
    message = str(info.value)
    assert message.startswith("invalid Akto guardrail configuration: ")
    return message


# -- required Akto settings -----------------------------------------------------------------------


def test_missing_url_and_key_are_both_named_with_their_env_vars() -> None:
    message = config_error(AktoSettings, {})
    assert "akto_base_url (env AKTO_GUARDRAIL_API_BASE) is required" in message
    assert "akto_api_key (env AKTO_API_KEY) is required" in message


def test_missing_key_alone_is_named() -> None:
    message = config_error(AktoSettings, {"akto_base_url": "http://akto:9090"})
    assert "akto_api_key (env AKTO_API_KEY) is required" in message
    assert "akto_base_url" not in message


def test_missing_url_alone_is_named_and_key_not_shown() -> None:
    message = config_error(AktoSettings, {"akto_api_key": SECRET})
    assert "akto_base_url (env AKTO_GUARDRAIL_API_BASE) is required" in message
    assert SECRET not in message


@pytest.mark.parametrize("url", ["ftp://akto.example.com", "akto.example.com", "http://", "file:///etc"])
def test_non_http_url_is_rejected_naming_key_env_and_what_it_accepts(url: str) -> None:
    message = config_error(AktoSettings, {"akto_base_url": url, "akto_api_key": SECRET})
    assert "akto_base_url (env AKTO_GUARDRAIL_API_BASE)" in message
    assert "must be an http:// or https:// URL" in message
    assert repr(url) in message
    assert SECRET not in message


@pytest.mark.parametrize("key", ["", "   "])
def test_blank_api_key_is_rejected_without_echoing_it(key: str) -> None:
    message = config_error(AktoSettings, {"akto_base_url": "http://akto", "akto_api_key": key})
    assert "akto_api_key (env AKTO_API_KEY): must not be empty; got <hidden>" in message


def test_api_key_never_appears_when_other_keys_are_wrong() -> None:
    params = {"akto_base_url": "nope", "akto_api_key": SECRET, "akto_account_id": "abc", "akto_metadata": "{"}
    message = config_error(AktoSettings, params)
    assert SECRET not in message
    assert "akto_account_id (env AKTO_ACCOUNT_ID): must be a whole number; got 'abc'" in message
    assert "akto_metadata (env AKTO_METADATA): must be a JSON object" in message


def test_api_key_from_env_never_appears_in_error_or_repr() -> None:
    env = {"AKTO_GUARDRAIL_API_BASE": "gopher://x", "AKTO_API_KEY": SECRET}
    message = config_error(AktoSettings, {}, env)
    assert SECRET not in message
    settings = AktoSettings.load({}, env={"AKTO_GUARDRAIL_API_BASE": "http://a", "AKTO_API_KEY": SECRET})
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.model_dump())
    assert settings.akto_api_key.get_secret_value() == SECRET


def test_good_akto_settings_have_reference_defaults_and_trimmed_url() -> None:
    settings = AktoSettings.load(GOOD, env={})
    assert settings.akto_base_url == "https://akto.example.com"
    assert settings.akto_account_id == "1000000"
    assert settings.akto_vxlan_id == "0"
    assert settings.context_source == "AGENTIC"
    assert settings.akto_metadata is None
    assert settings.tls_verify is True


def test_akto_settings_from_env() -> None:
    env = {
        "AKTO_GUARDRAIL_API_BASE": "http://akto:9090",
        "AKTO_API_KEY": SECRET,
        "AKTO_ACCOUNT_ID": "1234",
        "AKTO_METADATA": '{"policy_name": "strict"}',
        "AKTO_TLS_VERIFY": "false",
    }
    settings = AktoSettings.load({}, env=env)
    assert settings.akto_base_url == "http://akto:9090"
    assert settings.akto_account_id == "1234"
    assert settings.akto_metadata == {"policy_name": "strict"}
    assert settings.tls_verify is False


def test_akto_metadata_must_be_an_object() -> None:
    message = config_error(AktoSettings, {**GOOD, "akto_metadata": "[1, 2]"})
    assert "akto_metadata (env AKTO_METADATA): must be a JSON object" in message


# -- hook settings ------------------------------------------------------------------------------


def test_hook_defaults_match_the_spec() -> None:
    settings = HookSettings.load({}, env={})
    assert settings.on_flagged == "block"
    assert settings.unreachable_fallback == "fail_closed"
    assert settings.guardrail_timeout == 5.0


def test_unknown_on_flagged_names_key_env_and_allowed_values() -> None:
    message = config_error(HookSettings, {"on_flagged": "observe"})
    assert "on_flagged (env AKTO_ON_FLAGGED)" in message
    assert "'block' or 'monitor'" in message
    assert "got 'observe'" in message


@pytest.mark.parametrize("source", ["config", "env"])
def test_on_flagged_mask_is_refused_naming_what_is_accepted(source: str) -> None:
    # LiteLLM 1.109+ accepts on_flagged: mask for any guardrail and hands it on to ours.
    params, env = ({"on_flagged": "mask"}, {}) if source == "config" else ({}, {"AKTO_ON_FLAGGED": "mask"})
    message = config_error(HookSettings, params, env)
    assert "on_flagged (env AKTO_ON_FLAGGED): 'mask' is not a mode of the Akto guardrail" in message
    assert "accepted: block, monitor" in message
    assert "got 'mask'" in message


def test_unknown_on_flagged_from_env_is_rejected_too() -> None:
    message = config_error(HookSettings, {}, {"AKTO_ON_FLAGGED": "BLOCKING"})
    assert "on_flagged (env AKTO_ON_FLAGGED)" in message
    assert "got 'BLOCKING'" in message


def test_unknown_unreachable_fallback_names_key_and_allowed_values() -> None:
    message = config_error(HookSettings, {"unreachable_fallback": "fail_sometimes"})
    # The spec gives unreachable_fallback no environment variable.
    assert "unreachable_fallback: " in message
    assert "'fail_closed' or 'fail_open'" in message
    assert "got 'fail_sometimes'" in message


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("abc", "valid number"),
        (0, "greater than 0"),
        (-1, "greater than 0"),
        ("-0.5", "greater than 0"),
    ],
)
def test_bad_guardrail_timeout_is_named(value: object, complaint: str) -> None:
    message = config_error(HookSettings, {"guardrail_timeout": value})
    assert "guardrail_timeout: " in message
    assert complaint in message
    assert f"got {value!r}" in message


def test_guardrail_timeout_accepts_a_number_string_from_yaml() -> None:
    assert HookSettings.load({"guardrail_timeout": "10"}, env={}).guardrail_timeout == 10.0
    assert HookSettings.load({"guardrail_timeout": 0.25}, env={}).guardrail_timeout == 0.25


def test_env_on_flagged_is_used_when_param_absent() -> None:
    assert HookSettings.load({}, env={"AKTO_ON_FLAGGED": "monitor"}).on_flagged == "monitor"
    assert HookSettings.load({"on_flagged": None}, env={"AKTO_ON_FLAGGED": "monitor"}).on_flagged == "monitor"


def test_param_wins_over_env() -> None:
    settings = HookSettings.load({"on_flagged": "block"}, env={"AKTO_ON_FLAGGED": "monitor"})
    assert settings.on_flagged == "block"
    akto = AktoSettings.load(
        {"akto_base_url": "http://param:1", "akto_api_key": "param-key"},
        env={"AKTO_GUARDRAIL_API_BASE": "http://env:2", "AKTO_API_KEY": "env-key"},
    )
    assert akto.akto_base_url == "http://param:1"
    assert akto.akto_api_key.get_secret_value() == "param-key"


def test_empty_env_variable_counts_as_unset() -> None:
    assert HookSettings.load({}, env={"AKTO_ON_FLAGGED": ""}).on_flagged == "block"


def test_load_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKTO_ON_FLAGGED", "monitor")
    assert HookSettings.load({}).on_flagged == "monitor"


def test_several_problems_are_all_reported() -> None:
    message = config_error(HookSettings, {"on_flagged": "x", "unreachable_fallback": "y", "guardrail_timeout": 0})
    assert "on_flagged" in message
    assert "unreachable_fallback" in message
    assert "guardrail_timeout" in message


# -- queue settings ------------------------------------------------------------------------------


def test_queue_defaults() -> None:
    settings = QueueSettings.load({}, env={})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.queue_name == "akto:ingest"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://x", "must be a redis://, rediss://, unix:// or redis+sentinel://"),
        ("redis://host:notaport", "has an invalid port"),
        ("redis://host:99999", "has an invalid port"),
        ("redis://:6379/0", "names no host"),
        ("localhost:6379", "must be a redis://, rediss://, unix:// or redis+sentinel://"),
        ("redis+sentinel://s1:26379", "names no Sentinel master"),
        ("redis+sentinel://s1:26379/", "names no Sentinel master"),
        ("redis+sentinel:///mymaster", "names no Sentinel host"),
        ("redis+sentinel://s1:26379,/mymaster", "names no Sentinel host"),
        ("redis+sentinel://s1:port/mymaster", "Sentinel address 's1:port' has an invalid port"),
        ("redis+sentinel://s1:70000/mymaster", "Sentinel address 's1:70000' has an invalid port"),
        ("redis+sentinel://s1/mymaster/zero", "path must be /<master_name> or /<master_name>/<db number>"),
        ("redis+sentinel://s1/mymaster/1/2", "path must be /<master_name> or /<master_name>/<db number>"),
    ],
)
def test_bad_redis_url_is_named(url: str, complaint: str) -> None:
    message = config_error(QueueSettings, {"redis_url": url})
    assert "redis_url (env REDIS_URL): " in message
    assert complaint in message
    assert repr(url) in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://r:6380/2",
        "rediss://user:pw@r.example.com:6380",
        "unix:///tmp/r.sock",
        "redis+sentinel://s1:26379,s2:26380/mymaster",
        "redis+sentinel://:pw@s1,[::1]:26381/mymaster/3",
    ],
)
def test_good_redis_urls(url: str) -> None:
    assert QueueSettings.load({"redis_url": url}, env={}).redis_url == url


def test_sentinel_url_is_read_into_sentinels_master_db_and_password() -> None:
    target = parse_sentinel_url("redis+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/my-master/4")
    assert target == SentinelTarget(
        sentinels=[("s1", 26380), ("s2", 26379), ("::1", 26381)],
        master="my-master",
        db=4,
        username="app",
        password="p@ss",
    )
    assert parse_sentinel_url("redis+sentinel://s1/m") == SentinelTarget([("s1", 26379)], "m")


def test_bad_sentinel_url_error_does_not_leak_the_redis_password() -> None:
    message = config_error(QueueSettings, {"redis_url": "redis+sentinel://:hunter2-pw@s1:26379"})
    assert "names no Sentinel master" in message
    assert "hunter2-pw" not in message


def test_redis_url_and_queue_from_env() -> None:
    settings = QueueSettings.load({}, env={"REDIS_URL": "redis://env:1/3", "AKTO_QUEUE_NAME": "q1"})
    assert (settings.redis_url, settings.queue_name) == ("redis://env:1/3", "q1")


# -- worker settings -----------------------------------------------------------------------------


def test_worker_config_bounds_are_named_with_env_vars() -> None:
    message = config_error(WorkerConfig, {"batch_size": 0, "delivery_mode": "bulk", "retention_seconds": 10})
    assert "batch_size (env AKTO_BATCH_SIZE)" in message
    assert "delivery_mode (env AKTO_DELIVERY_MODE)" in message
    assert "'record' or 'batch'" in message
    assert "retention_seconds (env AKTO_RETENTION_SECONDS)" in message


def test_worker_config_from_env_strings() -> None:
    config = WorkerConfig.load(
        {}, env={"AKTO_BATCH_SIZE": "7", "AKTO_DELIVERY_MODE": "batch", "AKTO_BACKOFF_MAX": "2.5"}
    )
    assert config.batch_size == 7
    assert config.delivery_mode == "batch"
    assert config.backoff_max == 2.5
    assert config.concurrency == 128


def test_bad_redis_url_error_does_not_leak_the_redis_password() -> None:
    message = config_error(QueueSettings, {"redis_url": "rediss://akto:hunter2-pw@redis.internal:notaport"})
    assert "redis_url (env REDIS_URL)" in message
    assert "hunter2-pw" not in message


def test_infinite_guardrail_timeout_is_rejected() -> None:
    message = config_error(HookSettings, {"guardrail_timeout": "inf"})
    assert "guardrail_timeout" in message


def test_redis_timeout_and_round_budget_from_env_and_their_bounds() -> None:
    assert QueueSettings.load({}, env={}).redis_timeout == 5.0
    assert QueueSettings.load({}, env={"AKTO_REDIS_TIMEOUT": "1.5"}).redis_timeout == 1.5
    assert WorkerConfig.load({}, env={}).round_budget == 60.0
    assert WorkerConfig.load({}, env={"AKTO_WORKER_ROUND_BUDGET": "90"}).round_budget == 90.0
    assert "redis_timeout (env AKTO_REDIS_TIMEOUT)" in config_error(QueueSettings, {"redis_timeout": 0})
    assert "round_budget (env AKTO_WORKER_ROUND_BUDGET)" in config_error(WorkerConfig, {"round_budget": "inf"})
