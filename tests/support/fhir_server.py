"""Start and stop the project's in-memory FHIR R4 server (`fhir_server/server.mjs`).

The server is Medplum's FHIR engine behind a small Node HTTP wrapper. It needs its npm packages:
run ``npm ci --prefix fhir_server`` from the repository root once (CI does the same).

    with start_fhir_server(token="s3cret", seed=[Path("fhir_examples")]) as fhir:
        requests.get(f"{fhir.base_url}/Patient/p1", headers=fhir.auth_headers())
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import requests

from cds_service import client

REPO_ROOT = Path(__file__).resolve().parents[2]
FHIR_SERVER_DIR = REPO_ROOT / "fhir_server"
SERVER_SCRIPT = FHIR_SERVER_DIR / "server.mjs"
INSTALL_HINT = "run `npm ci --prefix fhir_server` from the repository root"
#: Environment variable naming the node executable to use (default: `node` on PATH).
NODE_ENV = "KETAMINE_CDS_NODE"

_LISTENING = re.compile(r"^LISTENING (http://\S+/fhir)\s*$")
_running: set[FhirServerHandle] = set()


class FhirServerError(RuntimeError):
    """The FHIR server could not be started (or loaded with data)."""


class FhirServerHandle:
    """A running `server.mjs` process. Stops it on `stop()` or when leaving a `with` block."""

    def __init__(
        self, process: subprocess.Popen[bytes], base_url: str, token: str | None, stderr_path: Path
    ) -> None:
        self.process = process
        self.base_url = base_url
        self.token = token
        self._stderr_path = stderr_path

    def auth_headers(self) -> dict[str, str]:
        """The `Authorization` header this server wants ({} when it has no token)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def put_resources(self, resources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Load resources with stable ids into this server (see `put_resources`)."""
        return put_resources(self.base_url, resources, self.token)

    @property
    def stderr(self) -> str:
        """What the server wrote on stderr so far (seeding summary, errors)."""
        try:
            return self._stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s). Safe to call twice."""
        _running.discard(self)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        with contextlib.suppress(OSError):
            self._stderr_path.unlink()

    def __enter__(self) -> FhirServerHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FhirServerHandle({self.base_url!r}, pid={self.process.pid})"


def node_command(node: str | None = None) -> list[str]:
    """The node executable and the flags this version needs (the package's own launcher logic)."""
    try:
        return client.node_command(node)
    except client.ClientError as exc:
        raise FhirServerError(str(exc)) from exc


def check_installed() -> None:
    """Raise `FhirServerError` with the install command when the npm packages are missing."""
    if not SERVER_SCRIPT.is_file():
        raise FhirServerError(f"{SERVER_SCRIPT} is missing")
    needed = ("fhir-router", "core", "definitions")
    missing = [n for n in needed if not (FHIR_SERVER_DIR / "node_modules/@medplum" / n).is_dir()]
    if missing:
        raise FhirServerError(
            f"the FHIR server's npm packages are not installed ({FHIR_SERVER_DIR / 'node_modules'}"
            f" lacks @medplum/{', @medplum/'.join(missing)}): {INSTALL_HINT}"
        )


def start_fhir_server(
    token: str | None = None,
    seed: Iterable[Path | str] | Path | str = (),
    *,
    timeout: float = 60.0,
    node: str | None = None,
    log_requests: bool = False,
) -> FhirServerHandle:
    """Start `server.mjs` on 127.0.0.1 with a free port and wait until it is listening.

    `token`: when given, every request except OPTIONS and /metadata needs `Bearer <token>`.
    `seed`: JSON files or directories to load at startup (transaction/batch Bundles, single
    resources, CDS Hooks requests whose prefetch resources are loaded with their ids).
    Raises `FhirServerError` (with the server's stderr) if it exits or is not ready in `timeout` s.
    """
    check_installed()
    command = [*node_command(node), str(SERVER_SCRIPT), "--port", "0", "--host", "127.0.0.1"]
    if token is not None:
        if not token:
            raise ValueError("token must be a non-empty string or None")
        command += ["--token", token]
    if isinstance(seed, str | os.PathLike):
        seed = [seed]
    seeds = [str(Path(p).resolve()) for p in seed]
    if seeds:
        command += ["--seed", *seeds]
    if log_requests:
        command.append("--log")

    fd, stderr_name = tempfile.mkstemp(prefix="fhir_server-", suffix=".log")
    stderr_path = Path(stderr_name)
    with os.fdopen(fd, "wb") as stderr_file:
        process = subprocess.Popen(
            command, cwd=FHIR_SERVER_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file
        )
    handle = FhirServerHandle(process, "", token, stderr_path)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(
        target=_pump_stdout, args=(process, lines), daemon=True, name=f"fhir_server-stdout-{process.pid}"
    ).start()

    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FhirServerError(
                    f"the FHIR server did not print LISTENING within {timeout:g} s{_stderr_tail(handle)}"
                )
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the process ended
                process.wait(timeout=5)
                raise FhirServerError(
                    f"the FHIR server exited with status {process.returncode} before it was"
                    f" ready{_stderr_tail(handle)}"
                )
            match = _LISTENING.match(line)
            if match:
                handle.base_url = match.group(1)
                break
    except BaseException:
        handle.stop()
        raise
    _running.add(handle)
    return handle


def put_resources(
    base_url: str, resources: Iterable[Mapping[str, Any]], token: str | None = None, *, timeout: float = 60.0
) -> dict[str, Any]:
    """Load resources with one transaction of `PUT Type/id` entries, so their ids stay as given.

    References between them must be literal (`Patient/p1`), not `urn:uuid:`. Returns the
    transaction-response Bundle; raises `FhirServerError` if the server rejects any entry.
    """
    entries = []
    for resource in resources:
        resource_type, resource_id = resource.get("resourceType"), resource.get("id")
        if not resource_type or not resource_id:
            raise ValueError(f"every resource needs resourceType and id: {dict(resource)!r:.200}")
        entries.append(
            {
                "resource": dict(resource),
                "request": {"method": "PUT", "url": f"{resource_type}/{resource_id}"},
            }
        )
    if not entries:
        return {"resourceType": "Bundle", "type": "transaction-response"}
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    response = requests.post(base_url.rstrip("/"), json=bundle, headers=headers, timeout=timeout)
    if response.status_code != 200:
        raise FhirServerError(f"transaction failed: HTTP {response.status_code}: {response.text[:2000]}")
    result = response.json()
    failed = [
        e.get("response")
        for e in result.get("entry", [])
        if not str(e.get("response", {}).get("status", "")).startswith("2")
    ]
    if failed:
        raise FhirServerError(f"transaction entries failed: {failed!r:.2000}")
    return result


def _pump_stdout(process: subprocess.Popen[bytes], lines: queue.Queue[str | None]) -> None:
    assert process.stdout is not None
    with contextlib.suppress(ValueError, OSError):  # closed by stop()
        for raw in process.stdout:
            lines.put(raw.decode("utf-8", errors="replace"))
    lines.put(None)


def _stderr_tail(handle: FhirServerHandle, limit: int = 4000) -> str:
    text = handle.stderr.strip()
    return f"; its stderr:\n{text[-limit:]}" if text else ""


@atexit.register
def _stop_leftovers() -> None:
    for handle in list(_running):
        handle.stop()
