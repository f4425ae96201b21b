"""Logging to stderr: one line per event, as text or JSON (for log shippers)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from maildesk.terminal import printable


class TextFormatter(logging.Formatter):
    """One line per event: control characters in a message (mail text can reach one) are
    shown escaped, so a subject cannot forge a log line; a traceback still follows on
    its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter stays at warning unless we debug.
    for noisy in ("mail.log", "apscheduler", "alembic", "mailparser", "aiosmtpd"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
