"""``ketamine-cds serve`` under the real gunicorn: the operator's settings reach gunicorn (flags and
``KETAMINE_CDS_*`` variables), the control socket stays off (gunicorn 25.1+ would create
``~/.gunicorn/gunicorn.ctl``: shared by every instance of a user, and "Permission denied" in a
read-only container), and the access log is JSON like every other line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from gunicorn.app.base import BaseApplication

from cds_service.cli import main
from cds_service.serving import JsonGunicornLogger

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gunicorn_cfg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Run ``serve`` up to gunicorn's start, and return the configuration gunicorn would run with."""
    captured: list[Any] = []
    monkeypatch.setattr(BaseApplication, "run", lambda self: captured.append(self.cfg))
    # serve monkey-patches the process for its gevent worker; here that would turn pytest's own
    # threads and sockets cooperative for every later test (threading KeyErrors at thread exit)
    monkeypatch.setattr("gevent.monkey.patch_all", lambda *args, **kwargs: None)
    monkeypatch.setenv("KETAMINE_CDS_DATABASE", str(tmp_path / "feedback.sqlite3"))

    def run(*args: str, env: dict[str, str] | None = None) -> Any:
        result = CliRunner().invoke(main, ["serve", "--dev", *args], env=env or {})
        assert result.exit_code == 0, result.output
        return captured[-1]

    return run


def control_socket_off(cfg: Any) -> bool:
    """gunicorn < 25.1 has no control socket (and no setting for it); 25.1+ must have it disabled."""
    return "control_socket" not in cfg.settings or cfg.control_socket_disable is True


def test_defaults_and_no_control_socket(gunicorn_cfg: Any) -> None:
    cfg = gunicorn_cfg()
    assert control_socket_off(cfg)
    assert (cfg.timeout, cfg.graceful_timeout, cfg.keepalive) == (30, 10, 2)
    assert (cfg.max_requests, cfg.max_requests_jitter) == (0, 0)
    assert cfg.accesslog is None
    assert cfg.logger_class is JsonGunicornLogger


def test_flags_reach_gunicorn(gunicorn_cfg: Any, tmp_path: Path) -> None:
    cfg = gunicorn_cfg(
        "--timeout", "45", "--graceful-timeout", "20", "--keep-alive", "7",
        "--max-requests", "1000", "--max-requests-jitter", "100",
        "--access-log", str(tmp_path / "access.log"), "--worker-tmp-dir", str(tmp_path),
    )  # fmt: skip
    assert (cfg.timeout, cfg.graceful_timeout, cfg.keepalive) == (45, 20, 7)
    assert (cfg.max_requests, cfg.max_requests_jitter) == (1000, 100)
    assert cfg.accesslog == str(tmp_path / "access.log")
    assert cfg.worker_tmp_dir == str(tmp_path)
    assert control_socket_off(cfg)


def test_environment_variables_reach_gunicorn(gunicorn_cfg: Any) -> None:
    env = {
        "KETAMINE_CDS_TIMEOUT": "60",
        "KETAMINE_CDS_GRACEFUL_TIMEOUT": "25",
        "KETAMINE_CDS_KEEP_ALIVE": "75",
        "KETAMINE_CDS_MAX_REQUESTS": "500",
        "KETAMINE_CDS_MAX_REQUESTS_JITTER": "50",
        "KETAMINE_CDS_ACCESS_LOG": "-",
        "KETAMINE_CDS_WORKER_TMP_DIR": "/dev/shm",
    }
    cfg = gunicorn_cfg(env=env)
    assert (cfg.timeout, cfg.graceful_timeout, cfg.keepalive) == (60, 25, 75)
    assert (cfg.max_requests, cfg.max_requests_jitter) == (500, 50)
    assert (cfg.accesslog, cfg.worker_tmp_dir) == ("-", "/dev/shm")


def test_negative_values_are_refused() -> None:
    result = CliRunner().invoke(main, ["serve", "--dev", "--timeout", "-1"])
    assert result.exit_code == 2
    assert "--timeout" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_real_gunicorn_access_log_and_no_control_socket(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETAMINE_CDS_")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("XDG_RUNTIME_DIR", None)
    command = [sys.executable, "-m", "cds_service.cli", "serve", "--dev", "--port", str(port)]
    command += ["--workers", "1", "--access-log", "-", "--max-requests", "100", "--max-requests-jitter", "10"]
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/healthz?patient=secret", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.3)
        assert process.poll() is None, process.communicate()[1]
        assert health.status_code == 200
        version = health.json()["rules_version"]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    access = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    hits = [a for a in access if a.get("event") == "http_access" and a.get("path") == "/healthz"]
    assert hits, out
    assert hits[0]["status"] == 200 and hits[0]["method"] == "GET" and hits[0]["rules_version"] == version
    assert hits[0]["request_id"] and hits[0]["duration_ms"] >= 0
    assert "secret" not in out  # no query string in the access log
    assert "Control server" not in err and "control socket" not in err.lower(), err
    assert not (home / ".gunicorn").exists() and not list(cwd.rglob("*.ctl"))
    # every line on stderr is JSON: the service's, gunicorn's own and the start banner
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and all(line.startswith("{") for line in lines), lines
    assert any("ketamine-cds serving http://" in json.loads(line).get("msg", "") for line in lines)
    assert any(json.loads(line)["logger"] == "gunicorn.error" for line in lines)
