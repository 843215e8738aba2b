"""A real PostgreSQL server for the tests, started from the installed binaries in a temp directory.

Registered as a pytest plugin in ``tests/conftest.py``. ``postgres_server`` is session-scoped: one
``initdb`` + ``pg_ctl start`` per run, on 127.0.0.1 and a free port, password (SCRAM) login. Each
test asks ``postgres_server.create_database()`` (or the ``postgres_url`` fixture) for a database of
its own. initdb and postgres refuse to run as root, so as root they run as the ``postgres`` user
(Debian's package creates it; ``nobody`` otherwise) through ``runuser``, in a directory it owns.

The binaries are found through ``KETAMINE_CDS_PG_BINDIR``, ``pg_ctl`` on PATH, or
``/usr/lib/postgresql/<version>/bin`` (Debian, Ubuntu). When none is found the fixture FAILS with
the install command; ``KETAMINE_CDS_SKIP_POSTGRES=1`` turns that into a skip (a documented opt-out).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SKIP_ENV = "KETAMINE_CDS_SKIP_POSTGRES"
BINDIR_ENV = "KETAMINE_CDS_PG_BINDIR"
INSTALL_HINT = "install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; ./scripts/test does it)"


class PostgresUnavailable(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl."""
    candidates: list[Path] = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(Path(os.environ[BINDIR_ENV]))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, pg_ctl) found: {INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One throwaway cluster. ``url(dbname)`` gives a libpq URL with the password in it."""

    user = "cds"

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.password = secrets.token_urlsafe(16)
        self.port = _free_port()
        self.run_as: str | None = None
        if os.geteuid() == 0:
            self.run_as = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
            if self.run_as is None:
                raise PostgresUnavailable("running as root and no 'postgres' or 'nobody' user to run it as")
        self.dir = Path(tempfile.mkdtemp(prefix="ketamine-cds-pg-"))
        self.data = self.dir / "data"
        self.logfile = self.dir / "server.log"
        self._databases = 0
        self.started_seconds = 0.0

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def _run(self, *args: str, timeout: float = 120) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise PostgresUnavailable(
                f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}\n{log}"
            )

    def start(self) -> PostgresServer:
        t0 = time.perf_counter()
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            for p in (self.dir, pwfile):
                os.chown(p, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",  # a throwaway cluster; the server itself runs with fsync on
        )
        self.start_server()
        self.started_seconds = time.perf_counter() - t0
        return self

    def start_server(self) -> None:
        """``pg_ctl start`` on the existing cluster (also after ``stop_server``)."""
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        pg_ctl = str(self.bindir / "pg_ctl")
        self._run(
            pg_ctl, "-D", str(self.data), "-l", str(self.logfile), "-o", options, "-w", "-t", "60", "start"
        )

    def stop_server(self, mode: str = "immediate") -> None:
        """Stop the server, keep the cluster (``immediate`` is a crash: no shutdown checkpoint)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        import psycopg

        self._databases += 1
        name = f"{prefix}_{self._databases}_{secrets.token_hex(3)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_server()
        shutil.rmtree(self.dir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


def _start_or_fail() -> PostgresServer:
    """A started server, or the test fails (skips only with KETAMINE_CDS_SKIP_POSTGRES set)."""
    server: PostgresServer | None = None
    try:
        server = PostgresServer()
        return server.start()
    except PostgresUnavailable as exc:
        if server is not None:
            server.stop()
        if os.environ.get(SKIP_ENV):
            pytest.skip(f"{exc} ({SKIP_ENV} is set)")
        pytest.fail(f"{exc}\n(set {SKIP_ENV}=1 to skip the PostgreSQL tests instead)", pytrace=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = _start_or_fail()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_postgres_server() -> Iterator[PostgresServer]:
    """A server for one test alone, for tests that stop and restart it."""
    server = _start_or_fail()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database of this test's own on the session's server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using it runs twice: on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state.sqlite3")
    return request.getfixturevalue("postgres_server").create_database()
