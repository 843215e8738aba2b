"""Operational logging: one JSON line per CDS call, with no tokens and no clinical content.

Patient ids appear only as a salted hash so calls for one patient can be correlated without
identifying the patient. The salt is ``KETAMINE_CDS_LOG_SALT`` or, when unset, a random one
generated once and kept in a file next to the database (so every worker and every restart hashes
alike, and nobody can recompute the hash of a known id without that file).

Lines from libraries (urllib3, gunicorn, werkzeug …) are written as their message template only,
without the arguments or exception text: those can quote URLs with patient ids, headers or bytes a
server sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

CALL_LOGGER = "ketamine_cds.calls"
OWN_LOGGERS = ("cds_service", "ketamine_cds")
#: gunicorn's lifecycle lines, whose arguments are the server's own (version, address, pid, worker
#: class, signal), never request data: written in full. Every other library line keeps its template.
LIFECYCLE_TEMPLATES = frozenset(
    {
        "Starting gunicorn %s",
        "Listening at: %s (%s)",
        "Using worker: %s",
        "Booting worker with pid: %s",
        "Handling signal: %s",
        "Worker exiting (pid: %s)",
        "Shutting down: %s",
    }
)
#: What json.dumps(default=str) writes: dates and dataclasses through ``default`` too; a key that is
#: not a string (json.dumps writes it as one) only on a second try, as it slows orjson on every dict.
_ORJSON_LIKE_JSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_NON_STR_KEYS = _ORJSON_LIKE_JSON | orjson.OPT_NON_STR_KEYS
#: Fields on every line from now on: the rule-set version in service (set by RuleSetProvider).
_EVERY_LINE: dict[str, Any] = {}
# Until init_salt runs (a library use without create_app), a per-process random salt: never a
# fixed default, which would make the hash of a known patient id computable by anyone.
_SALT = secrets.token_hex(16)


def salt_file(database: str | os.PathLike[str]) -> Path:
    """Where a generated salt is kept: next to a SQLite database; for a ``postgresql://`` URL
    under ``var/`` (set ``KETAMINE_CDS_LOG_SALT`` on every instance so they hash alike)."""
    if "://" in str(database) or str(database) == ":memory:":
        return Path("var/log-salt")
    return Path(database).with_name("log-salt")


def _keep_new_salt(keep_at: Path) -> None:
    """Write a new salt beside ``keep_at`` and link it into place: the file appears whole, so a
    worker or instance starting at the same moment never reads it empty; of two, the first link
    wins and both then read its salt."""
    fd, tmp = tempfile.mkstemp(dir=keep_at.parent, prefix=".log-salt-")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, keep_at)
    finally:
        os.unlink(tmp)


def init_salt(configured: str | None, keep_at: Path) -> None:
    """Use the configured salt, or the one kept at ``keep_at`` (created, mode 0600, if missing)."""
    global _SALT
    if configured:
        _SALT = configured
        return
    try:
        keep_at.parent.mkdir(parents=True, exist_ok=True)
        if not keep_at.exists():
            _keep_new_salt(keep_at)
        salt = keep_at.read_text(encoding="ascii").strip()
        if len(salt) < 32:
            raise ValueError(f"{keep_at} holds no usable salt")
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"cannot keep the log salt at {keep_at} ({exc}); set KETAMINE_CDS_LOG_SALT "
            "(a long random string) or make that directory writable"
        ) from None
    _SALT = salt


def set_every_line_field(name: str, value: Any) -> None:
    _EVERY_LINE[name] = value


def hash_id(value: str | None) -> str | None:
    if not value:
        return None
    return hashlib.sha256(f"{_SALT}:{value}".encode()).hexdigest()[:16]


_second: tuple[int, str] = (-1, "")  # the last line's whole second, as text (one tuple: thread-safe)


def _timestamp(created: float, msecs: float) -> str:
    """``2026-12-01T20:30:00.123Z``; the seconds part is formatted once per second, not per line."""
    global _second
    whole = int(created)
    last = _second
    if last[0] != whole:
        last = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{last[1]}.{int(msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": _timestamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            **_EVERY_LINE,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        elif record.name.startswith(OWN_LOGGERS) or (
            record.name == "gunicorn.error" and record.msg in LIFECYCLE_TEMPLATES
        ):
            payload["msg"] = record.getMessage()
        else:
            payload["msg"] = str(record.msg)  # the template: a library's arguments may quote request data
        if record.exc_info and record.exc_info[1] is not None:
            # The type and where it was raised, never the message: messages can quote record data.
            exc = record.exc_info[1]
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"
            payload["error"] = f"{type(exc).__name__} at {where}"
        try:  # orjson: a tenth of json.dumps's time for a call line, the same text
            line = orjson.dumps(payload, default=str, option=_ORJSON_LIKE_JSON)
        except TypeError:
            try:
                line = orjson.dumps(payload, default=str, option=_NON_STR_KEYS)
            except TypeError:  # an integer beyond 64 bits, say
                line = b""
        if line.isascii() and line:
            return line.decode("ascii")
        # json.dumps escapes non-ASCII (as \\u00e9), so a line stays one valid JSON text whatever the
        # stream's encoding does with non-ASCII bytes (backslashreplace would write \\xe9)
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


_CALLS = logging.getLogger(CALL_LOGGER)  # loggers live for the process: looked up once


def log_call(**fields: Any) -> None:
    """``_CALLS.info("cds call", extra=...)`` less its search of the stack for the caller (always
    this function): the same record, handled the same way."""
    if _CALLS.isEnabledFor(logging.INFO):
        code = log_call.__code__
        _CALLS.handle(
            _CALLS.makeRecord(
                CALL_LOGGER, logging.INFO, code.co_filename, code.co_firstlineno, "cds call", (), None,
                "log_call", {"fields": {"event": "cds_call", **fields}},
            )
        )  # fmt: skip
