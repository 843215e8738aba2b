"""The service (or the echo) under the real gunicorn, as a subprocess, and its CPU and memory from /proc."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from common import ROOT  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``ketamine-cds serve --dev`` as a subprocess (the process is gunicorn's master); ``launcher``
    replaces ``ketamine-cds`` (e.g. ``[python, bench/echo_serve.py]`` for the echo floor); ``env``
    is added to this process's environment; ``cwd`` is where it runs (``python -m`` imports from there)."""

    def __init__(
        self,
        tmp: Path,
        workers: int = 2,
        threads: int | None = None,
        port: int | None = None,
        database: Path | None = None,
        launcher: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.port = port or free_port()
        self.database = database or tmp / f"serve-{self.port}.sqlite3"
        self.log_path = tmp / f"serve-{self.port}.log"
        exe = shutil.which("ketamine-cds", path=str(ROOT / ".venv" / "bin")) or shutil.which("ketamine-cds")
        if exe is None:
            raise SystemExit("ketamine-cds not found (install the project into .venv)")
        cmd = [
            *(launcher or [exe, "serve"]),
            "--dev",
            "--workers",
            str(workers),
            "--port",
            str(self.port),
            "--database",
            str(self.database),
        ]
        if threads:
            cmd += ["--threads", str(threads)]
        self.cmd = cmd
        self.workers = workers
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self.ready_s: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"server exited with {self.proc.returncode}; see {self.log_path}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/healthz")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200 and len(self.worker_pids()) >= self.workers:
                    self.ready_s = round(time.monotonic() - self.started, 2)
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"server not ready after {timeout} s; see {self.log_path}")

    def worker_pids(self) -> list[int]:
        return children_of(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def children_of(pid: int) -> list[int]:
    """Child processes of ``pid`` (from /proc/<pid>/task/*/children, else a /proc scan)."""
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(k) for k in (task / "children").read_text().split()]
        return sorted(set(kids))
    except OSError:
        pass
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                kids.append(int(entry.name))
    return sorted(kids)


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime+stime of a process (all its threads), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def server_cpu(server: Server) -> float:
    return sum(cpu_seconds(p) or 0.0 for p in [server.pid, *server.worker_pids()])
