"""``akto-ingest check-config``: the keys LiteLLM checks itself (a bad value there starts the proxy
without the guardrail), and ours, named before the proxy starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from akto_ingest.cli import main
from akto_ingest.config_check import check_file

REPO = Path(__file__).resolve().parents[2]
ENV = {"AKTO_GUARDRAIL_API_BASE": "http://akto:9090", "AKTO_API_KEY": "k"}


def config(tmp_path: Path, line: str) -> Path:
    text = (REPO / "deploy" / "litellm" / "config.block.yaml").read_text()
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("      guardrail_timeout: 10 # optional, default: 5s", f"      {line}"))
    return path


def test_the_shipped_configs_pass() -> None:
    for name in ("config.block.yaml", "config.monitor.yaml", "config.during-call.yaml", "config.mcp.yaml"):
        assert len(check_file(REPO / "deploy" / "litellm" / name, ENV)) == 1, name


@pytest.mark.parametrize(
    ("line", "named"),
    [
        # LiteLLM 1.108.7 refuses these itself and starts the proxy WITHOUT the guardrail.
        ("on_flagged: log", "on_flagged: 'log' is not one of block, monitor;"),
        ("unreachable_fallback: fail-open", "unreachable_fallback: 'fail-open' is not one of fail_closed, fail_open"),
        ("guardrail_timeout: 0.5", "guardrail_timeout: 0.5 is not a whole number of seconds"),
        ("file_guardrail_timeout: abc", "file_guardrail_timeout: 'abc' is not a whole number of seconds"),
        # The guardrail's own checks.
        ("on_flagged: mask", "on_flagged (env AKTO_ON_FLAGGED): 'mask' is not a mode of the Akto guardrail"),
        ("check_response: maybe", "check_response (env AKTO_CHECK_RESPONSE): Input should be a valid boolean"),
        ("file_guardrails: maybe", "file_guardrails (env AKTO_FILE_GUARDRAILS): Input should be a valid boolean"),
        ("guardrail_timeout: -1", "guardrail_timeout: Input should be greater than 0"),
    ],
)
def test_a_bad_value_is_named_with_its_guardrail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, named: str
) -> None:
    path = config(tmp_path, f"guardrail_timeout: 10\n      {line}" if "guardrail_timeout" not in line else line)
    with pytest.MonkeyPatch.context() as env:
        for key, value in ENV.items():
            env.setenv(key, value)
        assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "guardrail 'akto-guard'" in err and named in err, err


def test_an_environment_reference_is_resolved(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, "guardrail_timeout: 10")
    with pytest.MonkeyPatch.context() as env:
        for key, value in ENV.items():
            env.setenv(key, value)
        assert main(["check-config", str(path)]) == 0
        assert "akto-guard: ok" in capsys.readouterr().out
        env.delenv("AKTO_API_KEY")
        assert main(["check-config", str(path)]) == 2
    assert "akto_api_key (env AKTO_API_KEY) is required" in capsys.readouterr().err
