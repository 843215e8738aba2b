"""``ketamine-cds serve`` (the real gunicorn) as a subprocess, for tests that need real instances."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m cds_service.cli``."""
    script = shutil.which("ketamine-cds", path=str(Path(sys.executable).parent))
    return [script, "serve"] if script else [sys.executable, "-m", "cds_service.cli", "serve"]


class ServeProcess:
    """One instance: its own process group (gunicorn master + workers), log in ``log_path``."""

    def __init__(
        self,
        tmp: Path,
        *args: str,
        workers: int = 2,
        name: str = "instance",
        command: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.log_path = tmp / f"{name}-{self.port}.log"
        self.cmd = [*(command or serve_command()), "--port", str(self.port), "--workers", str(workers), *args]
        env = {**os.environ, "KETAMINE_CDS_LOG_LEVEL": "WARNING"}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp, env=env, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 90.0) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve not ready after {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL master and workers at once, as a crashed host or an OOM kill would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
