"""Operational logging: one JSON line per CDS call, with no tokens and no clinical content.

Patient ids appear only as a salted hash so calls for one patient can be correlated without
identifying the patient.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from typing import Any

CALL_LOGGER = "ketamine_cds.calls"
_SALT = os.environ.get("KETAMINE_CDS_LOG_SALT", "ketamine-cds")
#: Fields on every line from now on: the rule-set version in service (set by RuleSetProvider).
_EVERY_LINE: dict[str, Any] = {}


def set_every_line_field(name: str, value: Any) -> None:
    _EVERY_LINE[name] = value


def hash_id(value: str | None) -> str | None:
    if not value:
        return None
    return hashlib.sha256(f"{_SALT}:{value}".encode()).hexdigest()[:16]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            **_EVERY_LINE,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        else:
            payload["msg"] = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            # The type and where it was raised, never the message: messages can quote record data.
            exc = record.exc_info[1]
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"
            payload["error"] = f"{type(exc).__name__} at {where}"
        return json.dumps(payload, separators=(",", ":"), default=str)


def configure(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(getattr(h, "_ketamine_cds", False) for h in root.handlers):
        root.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._ketamine_cds = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())


def log_call(**fields: Any) -> None:
    logging.getLogger(CALL_LOGGER).info("cds call", extra={"fields": {"event": "cds_call", **fields}})
