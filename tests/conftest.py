"""Shared test set-up: the repo root on sys.path (so ``tests.fake_akto`` and ``tests.stack`` import),
and the real Redis the integration tests need."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.stack import _redis_answers  # noqa: E402


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    port = urlparse(url).port or 6379
    if not _redis_answers(port):
        pytest.skip(f"no Redis answers at {url} (run the suite through `make test`, which starts one)")
    return url
