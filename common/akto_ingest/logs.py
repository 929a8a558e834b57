"""Log set-up for the hook and the worker: text by default, one JSON object per line with
``AKTO_LOG_FORMAT=json``. Call ids travel in each record's ``call_id`` attribute."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

# Every log line about one record names it as call_id=<id>; JSON lines lift that into a field.
CALL_ID = re.compile(r"call_id=([^\s,;]+)")
# The user-info part of a URL (scheme://user:password@host): configured URLs (Redis, Sentinel, Akto)
# may carry credentials, and a URL can end up in any message or exception text.
URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@")


def mask_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    return URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


class MaskCredentials(logging.Filter):
    """Masks URL credentials in a log record's message and exception text, before any handler (ours
    or the host's) formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_urls(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_urls(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None)
        if call_id is None:
            found = CALL_ID.search(line["msg"])
            call_id = found.group(1) if found else None
        if call_id is not None:
            line["call_id"] = call_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def mask_credentials(*names: str) -> None:
    """Mask URL credentials in every line these loggers emit (a logger's filter sees only its own
    lines, not its children's: name each logger that logs)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskCredentials) for f in logger.filters):
            logger.addFilter(MaskCredentials())


HANDLER_NAME = "akto_ingest"


class _WhenHostIsSilent(logging.StreamHandler):  # type: ignore[type-arg]
    """Prints a line only when no handler of the host's (up the logger tree) would."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(sys.stderr)
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        if not _host_handles(self._logger):
            super().emit(record)


def _host_handles(logger: logging.Logger) -> bool:
    parent = logger.parent if logger.propagate else None
    while parent is not None:
        if parent.handlers:
            return True
        parent = parent.parent if parent.propagate else None
    return False


def setup(name: str) -> logging.Logger:
    """Make our logger's lines visible without taking over the host's logging (once per logger).

    By default our lines go up to whatever the host process configured (LiteLLM's JSON logs, an
    app's root handler); only while the host has no handler does a plain stderr handler of ours print
    them. ``AKTO_LOG_FORMAT=json`` asks for our own format: then the logger has a JSON handler and
    does not propagate. ``AKTO_LOG_LEVEL`` (default INFO) is our logger's level.
    """
    logger = logging.getLogger(name)
    logger.setLevel(os.environ.get("AKTO_LOG_LEVEL", "INFO").upper())
    mask_credentials(name, "akto_ingest")
    if any(handler.get_name() == HANDLER_NAME for handler in logger.handlers):
        return logger
    handler: logging.Handler
    if os.environ.get("AKTO_LOG_FORMAT", "text").lower() == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.propagate = False
    else:
        handler = _WhenHostIsSilent(logger)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name(HANDLER_NAME)
    logger.addHandler(handler)
    return logger
