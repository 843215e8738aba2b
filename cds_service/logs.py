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
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        else:
            payload["msg"] = record.getMessage()
        if record.exc_info:
            payload["error"] = self.formatException(record.exc_info).splitlines()[-1]
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
