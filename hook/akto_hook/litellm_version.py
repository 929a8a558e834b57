"""The LiteLLM releases this guardrail supports, checked when ``akto_hook`` is imported.

The check reads the installed distribution's version and imports nothing of LiteLLM: a release
outside the range must stop the proxy with one line naming the version found and the range needed,
not with an ``ImportError`` from a LiteLLM internal that release lacks (1.80 has no
``GuardrailTracingDetail``). ``pyproject.toml``'s ``proxy`` extra starts at the same release, and
the Makefile's ``make compat`` runs both ends (unit tests keep the three in step).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from importlib import metadata

from akto_ingest.errors import UnsupportedLiteLLM

# The oldest release CI runs the proxy-level tests on; 1.81-1.93 load the guardrail only through a
# file beside config.yaml (deploy/litellm/akto_guardrail.py), 1.80 lacks APIs the hook uses.
OLDEST = (1, 81, 14)
# The first release not tested: the newest CI runs on is 1.110.x.
FIRST_UNTESTED = (1, 111, 0)
RANGE = f">={'.'.join(map(str, OLDEST))},<{FIRST_UNTESTED[0]}.{FIRST_UNTESTED[1]}"
# Lets a release newer than the range start (with a warning), for teams that upgrade LiteLLM before
# this package has been tested with it. Older releases lack what the hook imports: no way round.
ALLOW_NEWER_ENV = "AKTO_ALLOW_UNTESTED_LITELLM"
_TRUE = frozenset({"1", "true", "yes", "on"})

log = logging.getLogger("akto_hook")


def installed() -> str | None:
    """The installed LiteLLM's version, or None when it is not installed."""
    try:
        return metadata.version("litellm")
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, int, int] | None:
    """The release numbers of ``version`` (``1.110.2.post1`` and ``1.111.0rc1`` count as their release)."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def check(version: str | None, env: Mapping[str, str] | None = None) -> None:
    """Raise :class:`UnsupportedLiteLLM` when ``version`` is outside :data:`RANGE`."""
    env = os.environ if env is None else env
    needed = f"akto-litellm-ingest needs LiteLLM {RANGE}"
    if version is None:
        raise UnsupportedLiteLLM(f"{needed}; LiteLLM is not installed (pip install 'litellm[proxy]{RANGE}')")
    release = _release(version)
    if release is None:
        raise UnsupportedLiteLLM(f"{needed}; found LiteLLM {version!r}, which is not a release number")
    if release < OLDEST:
        raise UnsupportedLiteLLM(f"{needed}; found LiteLLM {version}: upgrade it (pip install 'litellm[proxy]{RANGE}')")
    if release >= FIRST_UNTESTED:
        if env.get(ALLOW_NEWER_ENV, "").strip().lower() in _TRUE:
            log.warning(
                "LiteLLM %s is newer than the tested range %s; starting as %s asks", version, RANGE, ALLOW_NEWER_ENV
            )
            return
        raise UnsupportedLiteLLM(
            f"{needed}; found LiteLLM {version}, newer than tested: install a release in the range, "
            f"or set {ALLOW_NEWER_ENV}=true to run it untested"
        )
