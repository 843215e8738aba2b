"""The real ``ketamine-cds serve`` (gunicorn) under attack (issue 10 items 1, 6, 9): audience binding
without a public base URL, slow clients, a SIGKILLed master, and the 401's shape."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.jwt_tools import public_jwk

from .conftest import RULES

ISS = "https://ehr.test/cds-client"
KID = "k1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


@contextlib.contextmanager
def serve(tmp_path: Path, *args: str, port: int | None = None, name: str = "serve") -> Iterator[Served]:
    port = port or free_port()
    log = tmp_path / f"{name}.log"
    env = {
        **os.environ,
        "KETAMINE_CDS_DATABASE": str(tmp_path / "feedback.sqlite3"),
        "KETAMINE_CDS_RULES_DIR": str(RULES),
    }
    cmd = [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(port), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    served = Served(proc, port, log)
    try:
        wait_healthy(served.url, proc)
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def issuers(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path = tmp_path / "issuers.yaml"
    path.write_text(yaml.safe_dump([{"iss": ISS, "jwks": {"keys": [public_jwk(key, KID)]}}]))
    return path


def token(key: ec.EllipticCurvePrivateKey, aud: str) -> str:
    now = int(time.time())
    claims = {"iss": ISS, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})


def any_request(hook: str) -> dict[str, Any]:
    root = Path(__file__).parents[1] / "fhir_examples"
    for path in sorted(root.glob("*.json")):
        body = json.loads(path.read_text())
        if body.get("hook") == hook:
            return body
    raise LookupError(hook)


# -- item 1: audience --------------------------------------------------------------------------------
def test_audience_is_not_taken_from_host_or_forwarded_headers(tmp_path, issuers, key) -> None:
    body = any_request("patient-view")
    with serve(tmp_path, "--trusted-issuers", str(issuers)) as srv:
        other = "https://other-cds.example.org/cds-services/patient-view"
        attack = requests.post(
            srv.url + "/cds-services/patient-view",
            json=body,
            headers={
                "Authorization": f"Bearer {token(key, other)}",
                "Host": "other-cds.example.org",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "other-cds.example.org",
            },
            timeout=10,
        )
        assert attack.status_code == 401, "a token minted for another service is refused"
        assert attack.headers["WWW-Authenticate"].startswith("Bearer")
        assert attack.headers["Content-Type"].startswith("application/json")
        mine = requests.post(
            srv.url + "/cds-services/patient-view",
            json=body,
            headers={"Authorization": f"Bearer {token(key, srv.url + '/cds-services/patient-view')}"},
            timeout=10,
        )
        assert mine.status_code == 200, mine.text[:300]


def test_jwt_mode_on_a_wildcard_address_needs_a_public_base_url(tmp_path, issuers) -> None:
    env = {**os.environ, "KETAMINE_CDS_DATABASE": str(tmp_path / "f.sqlite3")}
    env.pop("KETAMINE_CDS_PUBLIC_BASE_URL", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cds_service.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
            "--trusted-issuers",
            str(issuers),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode != 0
    assert "--public-base-url" in result.stderr


# -- item 6: slow clients ------------------------------------------------------------------------------
class SlowClients:
    """Connections that trickle their headers or body, one piece a second, until stopped."""

    def __init__(self, port: int, count: int) -> None:
        self.stop = threading.Event()
        self.socks: list[socket.socket] = []
        for i in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            if i % 2:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            else:
                s.sendall(
                    b"POST /cds-services/patient-view HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
                )
            self.socks.append(s)
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        while not self.stop.wait(1.0):
            for i, s in enumerate(self.socks):
                with contextlib.suppress(OSError):
                    s.sendall(b"X-Slow: 1\r\n" if i % 2 else b" ")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


def test_slow_clients_do_not_starve_healthz_or_valid_calls(tmp_path) -> None:
    body = any_request("patient-view")
    with serve(tmp_path, "--dev") as srv:
        slow = SlowClients(srv.port, 24)  # 3 × the 2 workers × 4 threads of the old gthread setup
        try:
            time.sleep(1.5)
            for _ in range(3):
                started = time.monotonic()
                assert requests.get(srv.url + "/healthz", timeout=3).status_code == 200
                resp = requests.post(srv.url + "/cds-services/patient-view", json=body, timeout=3)
                assert resp.status_code == 200
                assert time.monotonic() - started < 2.0
                time.sleep(0.5)
        finally:
            slow.close()


# -- item 9: the master SIGKILLed --------------------------------------------------------------------
def test_restart_right_after_the_master_is_sigkilled(tmp_path) -> None:
    port = free_port()
    with serve(tmp_path, "--dev", port=port, name="first") as first:
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
        time.sleep(0.3)
        with serve(tmp_path, "--dev", port=port, name="second") as second:
            assert requests.get(second.url + "/healthz", timeout=3).status_code == 200
            log = (tmp_path / "second.log").read_text()
            assert "Connection in use" not in log, "the orphaned workers released the port at once"
