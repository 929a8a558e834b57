"""The project's fake Akto, accepting ``null`` envelope values (``python -m bench.lenient_akto --port N``).

LiteLLM 1.108.7's built-in Akto guardrail sends ``direction``, ``process_id``, ``socket_id``,
``daemonset_id`` and ``enabled_graph`` as JSON ``null``. ``tests/fake_akto.py`` requires every value to
be a string and answers 422, so the built-in would fail open on every call and the benchmark would time
its error path (a logged traceback per call) instead of its checks. Akto's own services read a null as
an absent field (a guess: the public source does not settle it), so this wrapper drops null values
before the fake's checks and changes nothing else. The bench uses it only when the fake still rejects
nulls (see ``context.Bench.akto``).
"""

from __future__ import annotations

import sys
from typing import Any

from tests import fake_akto

_strict = fake_akto._check_envelope


def _check_envelope(envelope: object, max_string: int, *, allow_bool: frozenset[str] = frozenset()) -> dict[str, Any]:
    if isinstance(envelope, dict):
        envelope = {key: value for key, value in envelope.items() if value is not None}
    return _strict(envelope, max_string, allow_bool=allow_bool)


fake_akto._check_envelope = _check_envelope  # the handlers look it up in the module at call time

if __name__ == "__main__":
    sys.exit(fake_akto.main())
