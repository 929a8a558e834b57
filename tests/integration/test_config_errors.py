"""A bad configuration stops the proxy and the worker at start, with a message naming the key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.stack import AKTO_KEY, BIN, REPO, litellm_config, refused_start

pytestmark = pytest.mark.integration

GOOD_WORKER_ENV = {
    "AKTO_GUARDRAIL_API_BASE": "http://127.0.0.1:9",
    "AKTO_API_KEY": AKTO_KEY,
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "AKTO_WORKER_METRICS_PORT": "0",
}


def test_proxy_refuses_to_start_with_a_bad_akto_url(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(litellm_config(REPO / "deploy" / "litellm" / "config.block.yaml"))
    output = refused_start(config, tmp_path, AKTO_GUARDRAIL_API_BASE="akto.internal:9090", AKTO_API_KEY=AKTO_KEY)
    assert "akto_base_url (env AKTO_GUARDRAIL_API_BASE): must be an http:// or https:// URL" in output
    assert "Application startup failed" in output


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"AKTO_GUARDRAIL_API_BASE": ""}, "akto_base_url (env AKTO_GUARDRAIL_API_BASE) is required"),
        ({"AKTO_API_KEY": ""}, "akto_api_key (env AKTO_API_KEY) is required"),
        ({"AKTO_GUARDRAIL_API_BASE": "ftp://akto"}, "must be an http:// or https:// URL"),
        ({"REDIS_URL": "redis://localhost:port"}, "redis_url (env REDIS_URL): has an invalid port"),
        ({"AKTO_WORKER_CONCURRENCY": "0"}, "concurrency (env AKTO_WORKER_CONCURRENCY)"),
        ({"AKTO_DELIVERY_MODE": "bulk"}, "delivery_mode (env AKTO_DELIVERY_MODE): Input should be 'record' or 'batch'"),
        ({"AKTO_DELIVERY_TIMEOUT": "-1"}, "delivery_timeout (env AKTO_DELIVERY_TIMEOUT)"),
    ],
)
def test_worker_refuses_to_start_with_bad_config(change: dict[str, str], expected: str) -> None:
    env = {"PATH": str(BIN), **GOOD_WORKER_ENV, **change}
    result = subprocess.run(
        [str(BIN / "arq"), "akto_worker.WorkerSettings"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-2000:]
    assert AKTO_KEY not in result.stderr
