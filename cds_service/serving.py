"""The gunicorn settings operators set on ``ketamine-cds serve``, gunicorn's log lines as JSON, the
token audience from the bind address, and workers that die with their master.

Each setting is a ``serve`` flag and a ``KETAMINE_CDS_*`` environment variable (README, Configuration).
Whatever the options, gunicorn's control socket (gunicorn 25.1+) stays off: by default it is created in
``$HOME/.gunicorn`` (shared by every instance of one user, and unwritable in a read-only container:
"Control server error: Permission denied: '/app/.gunicorn'"), and nothing here uses ``gunicornc``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import click
from gunicorn.glogging import Logger as GunicornLogger

from .logs import JsonFormatter

#: (flag, environment variable suffix, gunicorn setting, type, default, help)
OPTIONS: list[tuple[str, str, str, Any, Any, str]] = [
    ("--timeout", "TIMEOUT", "timeout", int, 30, "Seconds a silent worker is given before it is restarted."),
    (
        "--graceful-timeout",
        "GRACEFUL_TIMEOUT",
        "graceful_timeout",
        int,
        10,
        "Seconds workers get to finish their requests on stop or restart.",
    ),
    (
        "--keep-alive",
        "KEEP_ALIVE",
        "keepalive",
        int,
        2,
        "Seconds an idle keep-alive connection is kept open (also bounds a slow client's header read).",
    ),
    (
        "--max-requests",
        "MAX_REQUESTS",
        "max_requests",
        int,
        0,
        "Restart a worker after this many requests (0: never).",
    ),
    (
        "--max-requests-jitter",
        "MAX_REQUESTS_JITTER",
        "max_requests_jitter",
        int,
        0,
        "Add up to this many requests to --max-requests per worker, so workers restart at different times.",
    ),
    (
        "--access-log",
        "ACCESS_LOG",
        "accesslog",
        str,
        None,
        "Write one JSON line per HTTP request to this file ('-': stdout). Default: off.",
    ),
    (
        "--worker-tmp-dir",
        "WORKER_TMP_DIR",
        "worker_tmp_dir",
        str,
        None,
        "Folder for the workers' heartbeat files (default: the system's temporary folder; "
        "/dev/shm in the Docker image).",
    ),
]


def options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The click options of :data:`OPTIONS`, passed to the command as keyword arguments."""
    for flag, env, _name, kind, default, text in reversed(OPTIONS):
        command = click.option(
            flag,
            type=click.IntRange(min=0) if kind is int else kind,
            default=default,
            show_default=default is not None,
            envvar=f"KETAMINE_CDS_{env}",
            help=text,
        )(command)
    return command


def gunicorn_settings(values: dict[str, Any]) -> dict[str, Any]:
    """gunicorn setting → value, from the keyword arguments the :func:`options` produce."""
    out: dict[str, Any] = {}
    for flag, _env, name, _kind, default, _text in OPTIONS:
        out[name] = values.get(flag.lstrip("-").replace("-", "_"), default)
    out["logger_class"] = JsonGunicornLogger
    out["control_socket_disable"] = True
    return out


def configure(cfg: Any, settings: dict[str, Any]) -> None:
    """Set ``settings`` on a gunicorn ``Config``; a setting this gunicorn does not know (the control
    socket before gunicorn 25.1) is skipped, as there is then nothing to switch off."""
    for name, value in settings.items():
        if name in cfg.settings:
            cfg.set(name, value)


class JsonGunicornLogger(GunicornLogger):
    """gunicorn's own lines (boot, worker exits) and the access log as JSON, like every other line.

    An access line carries method, path (never the query string), status, bytes, duration, the
    client address and the request id; no header, no body.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(JsonFormatter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.cfg.accesslog:
            return
        try:
            status = str(getattr(resp, "status", "") or "").split(" ", 1)[0]
            headers = getattr(resp, "headers", None) or []
            pairs = headers.items() if isinstance(headers, dict) else headers
            request_id = next((v for k, v in pairs if str(k).lower() == "x-request-id"), None)
            fields = {
                "event": "http_access",
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO"),
                "status": int(status) if status.isdigit() else status or None,
                "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000, 2),
                "remote": environ.get("REMOTE_ADDR"),
                "request_id": request_id,
            }
            self.access_log.info("access", extra={"fields": fields})
        except Exception:  # noqa: BLE001 - an access line must never break a response
            logging.getLogger(__name__).exception("access log line failed")


# -- audience and orphans (docs/security.md) ------------------------------------------------------
PR_SET_PDEATHSIG = 1


def derived_public_base_url(host: str, port: int) -> str:
    """``http://host:port`` when the bind address names one interface; otherwise no safe value
    exists (a wildcard bind is reached under names we cannot know) and serve refuses to start."""
    wildcard = host in ("", "*")
    with contextlib.suppress(ValueError):
        wildcard = wildcard or ipaddress.ip_address(host.strip("[]")).is_unspecified
    if wildcard:
        raise click.ClickException(
            f"JWT mode on {host or '*'}:{port} needs --public-base-url (KETAMINE_CDS_PUBLIC_BASE_URL): "
            "the URL clients call, which the token audience must equal. It is never taken from the "
            "request's Host or X-Forwarded-* headers."
        )
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}"


def exit_with_master(server: Any, worker: Any) -> None:
    """gunicorn ``post_fork``: the kernel kills this worker when the master dies (Linux
    PR_SET_PDEATHSIG), so a SIGKILLed master leaves no orphan holding the port for the graceful
    timeout; a master that died before the call is caught by the parent check."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
            logging.getLogger(__name__).warning("PR_SET_PDEATHSIG unavailable")
    if os.getppid() != worker.ppid:
        os._exit(0)
