"""One small stack per LiteLLM release under test (``make compat`` runs this folder in a virtualenv
per end of the supported range): the fake Akto, a Redis of its own, a block-mode proxy (the
fail_closed default), a monitor-mode proxy, a proxy with only the success callback, and a worker
per proxy queue."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from akto_hook import litellm_version
from tests.stack import (
    BLOCK_EXAMPLE,
    CALLBACK_EXAMPLE,
    FAST_RETRY,
    MONITOR_EXAMPLE,
    REPO,
    AktoAdmin,
    Proc,
    Proxy,
    litellm_config,
    new_redis,
    start_fake_akto,
    start_proxy,
    start_worker,
    wait_proxy,
    worker_env,
)

# The one-line files users put beside config.yaml for LiteLLM 1.81-1.93 (README.md, Compatibility).
GUARDRAIL_FILE = REPO / "deploy" / "litellm" / "akto_guardrail.py"
CALLBACK_FILE = REPO / "deploy" / "litellm" / "akto_callbacks.py"
# From this release on, LiteLLM also imports what config.yaml names as an installed module.
MODULE_LOADING = (1, 94, 0)
# From this release until MODULE_LOADING, callbacks too are read only from a file beside config.yaml.
CALLBACK_FILES = (1, 84, 0)


def release() -> tuple[int, int, int]:
    version = litellm_version.installed()
    found = litellm_version._release(version or "")
    assert found is not None, f"no LiteLLM release installed: {version!r}"
    return found


def guardrail_reference(config_dir: Path) -> str:
    """``guardrail:`` as README.md tells users of this release to write it."""
    if release() >= MODULE_LOADING:
        return "akto_hook.AktoGuardrail"
    shutil.copy(GUARDRAIL_FILE, config_dir / GUARDRAIL_FILE.name)
    return "akto_guardrail.AktoGuardrail"


def callback_reference(config_dir: Path) -> str:
    """The callback's name in ``success_callback`` as README.md tells users of this release to write it."""
    if not CALLBACK_FILES <= release() < MODULE_LOADING:
        return "akto_hook.akto_callback"
    shutil.copy(CALLBACK_FILE, config_dir / CALLBACK_FILE.name)
    return "akto_callbacks.akto_callback"


# A pass-through route on the block proxy; LiteLLM forwards what passes to the fake Akto's stats page.
PASS_THROUGH = "/native/forward"


def with_pass_through(config: str, target: str) -> str:
    loaded = yaml.safe_load(config)
    loaded.setdefault("general_settings", {})["pass_through_endpoints"] = [
        # No ``auth``: 1.81 takes it only with an Enterprise licence.
        {"path": PASS_THROUGH, "target": target, "guardrails": {"akto-guard": None}}
    ]
    return str(yaml.safe_dump(loaded))


@dataclass
class CompatStack:
    log_dir: Path
    akto: AktoAdmin
    block: Proxy
    monitor: Proxy
    callback: Proxy
    workers: dict[str, Proc]


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compat")


@pytest.fixture(scope="session")
def stack(log_dir: Path) -> Iterator[CompatStack]:
    run = uuid.uuid4().hex[:8]
    reference = {"guardrail": guardrail_reference(log_dir)}
    callback = [callback_reference(log_dir)]
    akto_proc, akto = start_fake_akto(log_dir)
    redis = new_redis(log_dir)
    configs = {
        # The defaults under test: fail_closed, 5 s; and a pass-through route that names the guardrail.
        "block": with_pass_through(
            litellm_config(BLOCK_EXAMPLE, drop=("unreachable_fallback", "guardrail_timeout"), extra=reference),
            f"{akto.url}/_admin/stats",
        ),
        "monitor": litellm_config(MONITOR_EXAMPLE, extra=reference),
        # The shipped callback example: success_callback and failure_callback.
        "callback": litellm_config(
            CALLBACK_EXAMPLE, litellm_settings={"success_callback": callback, "failure_callback": callback}
        ),
    }
    procs: list[Proc] = [akto_proc]
    try:
        proxies = {}
        for name, text in configs.items():
            proxies[name] = start_proxy(
                f"proxy-{name}",
                text,
                log_dir,
                akto_url=akto.url,
                redis_url=redis.url,
                queue=f"akto:compat:{run}:{name}",
            )
            procs.append(proxies[name].proc)
        for proxy in proxies.values():
            wait_proxy(proxy)
        workers: dict[str, Proc] = {}
        for name, proxy in proxies.items():
            env = worker_env(akto.url, redis.url, proxy.queue, **FAST_RETRY)
            workers[name] = start_worker(f"worker-{name}", env, log_dir)
            procs.append(workers[name])
        yield CompatStack(log_dir, akto, workers=workers, **proxies)
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=30)
        redis.stop()


@pytest.fixture(autouse=True)
def clean_akto(request: pytest.FixtureRequest) -> None:
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").akto.reset()
