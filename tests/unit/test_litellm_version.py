"""The LiteLLM range: checked at ``import akto_hook`` before any LiteLLM internal is imported, and the
same range as the ``proxy`` extra in pyproject.toml."""

from __future__ import annotations

import importlib
import logging
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from akto_hook import litellm_version
from akto_ingest.errors import ConfigError, UnsupportedLiteLLM

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("version", ["1.81.14", "1.94.0", "1.108.7", "1.110.2", "1.110.2.post1", "1.110.99"])
def test_a_release_in_the_range_passes(version: str) -> None:
    litellm_version.check(version, env={})


@pytest.mark.parametrize("version", ["1.80.17", "1.81.13", "1.81.0", "1.7.0", "0.99.0"])
def test_an_older_release_is_named_with_the_range_needed(version: str) -> None:
    with pytest.raises(UnsupportedLiteLLM) as info:
        litellm_version.check(version, env={litellm_version.ALLOW_NEWER_ENV: "true"})
    message = str(info.value)
    assert message.startswith("akto-litellm-ingest needs LiteLLM >=1.81.14,<1.111; ")
    assert f"found LiteLLM {version}: upgrade it" in message
    assert "\n" not in message
    # A ConfigError, not a ValueError: LiteLLM would otherwise start the proxy without the guardrail.
    assert isinstance(info.value, ConfigError) and not isinstance(info.value, ValueError)


@pytest.mark.parametrize("version", ["1.111.0", "1.111.0rc1", "1.120.3", "2.0.0"])
def test_a_newer_release_is_refused_unless_allowed(version: str, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(UnsupportedLiteLLM) as info:
        litellm_version.check(version, env={})
    assert f"found LiteLLM {version}, newer than tested" in str(info.value)
    assert "AKTO_ALLOW_UNTESTED_LITELLM=true" in str(info.value)
    with caplog.at_level(logging.WARNING, "akto_hook"):
        litellm_version.check(version, env={"AKTO_ALLOW_UNTESTED_LITELLM": "true"})
    assert f"LiteLLM {version} is newer than the tested range" in caplog.text


def test_missing_or_unreadable_litellm_is_named() -> None:
    with pytest.raises(UnsupportedLiteLLM, match="LiteLLM is not installed"):
        litellm_version.check(None, env={})
    with pytest.raises(UnsupportedLiteLLM, match="found LiteLLM 'dev', which is not a release number"):
        litellm_version.check("dev", env={})


def test_import_stops_before_litellm_internals_on_an_old_release(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "1.80.17" if name == "litellm" else real(name))
    saved = {name: mod for name, mod in sys.modules.items() if name == "akto_hook" or name.startswith("akto_hook.")}
    for name in saved:
        del sys.modules[name]
    try:
        with pytest.raises(UnsupportedLiteLLM, match=r"needs LiteLLM >=1\.81\.14,<1\.111; found LiteLLM 1\.80\.17"):
            importlib.import_module("akto_hook")
        # The check ran before the modules that import LiteLLM's internals.
        assert "akto_hook.guardrail" not in sys.modules and "akto_hook.verdicts.reporting" not in sys.modules
    finally:
        for name in [n for n in sys.modules if n == "akto_hook" or n.startswith("akto_hook.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_a_proxy_process_gets_one_line_naming_version_and_range(tmp_path: Path) -> None:
    # What a process importing the hook prints when the installed LiteLLM is too old.
    code = (
        "from importlib import metadata; real = metadata.version; "
        "metadata.version = lambda n: '1.80.17' if n == 'litellm' else real(n); import akto_hook"
    )
    paths = ":".join(str(REPO / part) for part in ("common", "hook", "worker"))
    result = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": paths}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "akto_ingest.errors.UnsupportedLiteLLM: akto-litellm-ingest needs LiteLLM >=1.81.14,<1.111; "
        "found LiteLLM 1.80.17: upgrade it (pip install 'litellm[proxy]>=1.81.14,<1.111')"
    )


def test_the_proxy_extra_starts_at_the_oldest_and_never_downgrades_a_1_x() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    oldest = ".".join(map(str, litellm_version.OLDEST))
    assert litellm_version.RANGE.startswith(f">={oldest},")
    # Only LiteLLM itself, not its [proxy] extra: where that extra does not resolve, pip would go back
    # to an older LiteLLM whose extra does.
    assert project["optional-dependencies"]["proxy"] == [f"litellm>={oldest},<2"]


def test_make_compat_runs_the_oldest_and_a_release_below_the_first_untested() -> None:
    makefile = (REPO / "Makefile").read_text()
    ends = {name: re.search(rf"^{name} \?= (\S+)$", makefile, re.M) for name in ("COMPAT_OLDEST", "COMPAT_NEWEST")}
    assert all(ends.values()), ends
    oldest, newest = (litellm_version._release(match.group(1)) for match in ends.values() if match)
    assert oldest == litellm_version.OLDEST
    assert newest is not None and newest < litellm_version.FIRST_UNTESTED
    assert newest[:2] == (litellm_version.FIRST_UNTESTED[0], litellm_version.FIRST_UNTESTED[1] - 1)
