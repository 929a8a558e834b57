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


def setup(name: str) -> logging.Logger:
    """Give our logger its own handler (once) so its lines show whatever the host process configured."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        if os.environ.get("AKTO_LOG_FORMAT", "text").lower() == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("AKTO_LOG_LEVEL", "INFO").upper())
        logger.propagate = False
    return logger
