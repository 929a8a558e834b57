"""Opt-in (``file_guardrails: true``): attachments checked by Akto's file guardrail, beside the text check.

Block mode only: a record never holds an attachment's bytes (see :mod:`attachments`), so only the
inline check, which still has the request, can send them. The attachments go in one
``/api/http-proxy`` call with ``file_guardrails=true`` and their own timeout
(``file_guardrail_timeout``), concurrently with the text check, so they add no Akto delay of their own
unless Akto is slower on files. A block from either blocks; a file check that gets no verdict is a
:class:`Failure` for ``unreachable_fallback``, as for text. Akto cannot mask an attachment in place,
so a masking verdict on one blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

from akto_ingest.akto_client import AktoClient
from akto_ingest.config import AktoSettings
from akto_ingest.errors import RecordTooLarge
from akto_ingest.record import Record
from akto_ingest.wire import ALLOW, Verdict, files_body

from .. import views
from ..views import attachments
from .check import Decision, Failure, ask

log = logging.getLogger("akto_hook")

UNMASKABLE = "Akto's masking of an attachment cannot be applied"


class FileCheck:
    """Asks Akto's file guardrail about a request's attachments."""

    def __init__(self, client: AktoClient, akto: AktoSettings, timeout: float) -> None:
        self._client = client
        self._akto = akto
        self._timeout = timeout

    async def check(self, record: Record, request: Mapping[str, Any]) -> Decision | None:
        """The verdict on the attachments in ``request`` (LiteLLM's request data, which still has their
        bytes); None when there are none. Never raises (but for cancellation)."""
        try:
            files = attachments.for_file_check(views.content(request))
            if not files:
                return None
            body = files_body(record, self._akto, files)
        except RecordTooLarge as exc:
            return Decision(ALLOW, 0, Failure("too_large", str(exc)))
        except Exception as exc:
            log.exception("akto file check could not be built call_id=%s", record.id)
            return Decision(ALLOW, 0, Failure("internal_error", f"cannot build the file check: {exc}"))
        verdict = await ask(self._client, body, check="files", time_limit=self._timeout)
        if isinstance(verdict, Failure):
            return Decision(ALLOW, 1, verdict)
        if verdict.modified_payload is not None and not verdict.blocks:
            verdict = Verdict(allowed=False, reason=UNMASKABLE, behaviour="block", policy=verdict.policy)
        return Decision(verdict, 1)


async def with_files(text: Awaitable[Decision], files: FileCheck | None, record: Record, request: Any) -> Decision:
    """The text check's decision, joined (when ``files`` is set) with the attachments' own."""
    if files is None or not isinstance(request, Mapping):
        return await text
    text_decision, file_decision = await asyncio.gather(text, files.check(record, request))
    if file_decision is None or text_decision.blocks:
        return text_decision
    parts = text_decision.parts + file_decision.parts
    if file_decision.blocks:
        return Decision(file_decision.verdict, parts)
    # The text's verdict stays (it may carry masking) unless only the attachments were flagged.
    only_files_flagged = file_decision.verdict.flagged and not text_decision.verdict.flagged
    verdict = file_decision.verdict if only_files_flagged else text_decision.verdict
    failure = text_decision.failure or file_decision.failure
    return Decision(verdict, parts, failure, text_decision.masks, split=text_decision.split)
