"""The project's Node FHIR server: its folder (installed once into a cache) and the command."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .common import FHIR_SERVER_DIR, NODE_ENV, ClientError


# -- the Node FHIR server ---------------------------------------------------------------------------
def node_command(node: str | None = None) -> list[str]:
    """The node executable, with ``--experimental-websocket`` on Node < 22 (``@medplum/core`` needs it)."""
    executable = node or os.environ.get(NODE_ENV) or shutil.which("node")
    if not executable:
        raise ClientError(f"node is not on PATH: install Node 20+ (or set {NODE_ENV})")
    try:
        version = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClientError(f"cannot run {executable} --version: {exc}") from exc
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < 20:
        raise ClientError(f"node {version or '?'} at {executable}: the FHIR server needs Node 20+")
    return [executable, "--experimental-websocket"] if int(match.group(1)) < 22 else [executable]


#: Where ``fhir-server`` installs the server's npm packages when the bundled folder has none.
CACHE_ENV = "KETAMINE_CDS_CACHE_DIR"
SERVER_FILES = ("package.json", "package-lock.json", "server.mjs")
MEDPLUM_PACKAGES = ("fhir-router", "core", "definitions")


def cache_dir() -> Path:
    """``$KETAMINE_CDS_CACHE_DIR``, else ``$XDG_CACHE_HOME/ketamine-cds``, else ``~/.cache/ketamine-cds``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ketamine-cds"


def _missing_packages(folder: Path) -> list[str]:
    modules = folder / "node_modules" / "@medplum"
    return [f"@medplum/{n}" for n in MEDPLUM_PACKAGES if not (modules / n).is_dir()]


def fhir_server_folder(source: Path | None = None, *, say: Any = None) -> Path:
    """A folder holding ``server.mjs`` and its npm packages, ready to run.

    The bundled folder itself when its ``node_modules`` is installed (a checkout after
    ``npm ci --prefix fhir_server``). Otherwise (an installed wheel, whose site-packages may be
    read-only) a copy in :func:`cache_dir`, one per lockfile, where ``npm ci`` runs once; ``say``
    is told before npm runs.
    """
    source = Path(source or FHIR_SERVER_DIR)
    absent = [n for n in SERVER_FILES if not (source / n).is_file()]
    if absent:
        raise ClientError(f"the FHIR server in {source} is incomplete ({', '.join(absent)} missing)")
    if not _missing_packages(source):
        return source
    lock = (source / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock + (source / "server.mjs").read_bytes()).hexdigest()[:12]
    target = cache_dir() / f"fhir-server-{digest}"
    if not _missing_packages(target):
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise ClientError(
            f"the FHIR server's npm packages are not installed in {source}, and npm is not on PATH "
            f"to install them into {target}: install Node 20+ with npm, or run `npm ci --prefix {source}`"
        )
    if say is not None:
        say(f"installing the FHIR server's npm packages into {target} (once): npm ci")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    try:
        for name in SERVER_FILES:
            shutil.copyfile(source / name, staging / name)
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise ClientError(f"npm ci in {staging} failed ({done.returncode}): {done.stdout.strip()[-800:]}")
        try:
            staging.rename(target)  # atomic: a half-installed folder is never used
        except OSError:
            if _missing_packages(target):  # not another process winning the race
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def fhir_server_command(
    *,
    port: int = 8090,
    host: str = "127.0.0.1",
    token: str | None = None,
    seeds: Iterable[Path] = (),
    log: bool = False,
    node: str | None = None,
    folder: Path | None = None,
) -> list[str]:
    """The command line that runs ``server.mjs`` from ``folder`` (default :func:`fhir_server_folder`)."""
    folder = folder or fhir_server_folder()
    missing = _missing_packages(folder)
    if missing:
        raise ClientError(
            f"the FHIR server's npm packages are not installed ({', '.join(missing)} missing): "
            f"run `npm ci --prefix {folder}`"
        )
    command = [*node_command(node), str(folder / "server.mjs"), "--port", str(port), "--host", host]
    if token:
        command += ["--token", token]
    seeds = [str(Path(s).resolve()) for s in seeds]
    if seeds:
        command += ["--seed", *seeds]
    if log:
        command.append("--log")
    return command


def run_fhir_server(command: list[str]) -> Iterator[str]:
    """Run the server in the foreground, yielding its stdout lines (``LISTENING <base>`` first);
    stops it when the caller stops iterating (Ctrl-C included)."""
    script = next(Path(a) for a in command if a.endswith("server.mjs"))
    process = subprocess.Popen(command, cwd=script.parent, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield from (line.rstrip("\n") for line in process.stdout)
        if process.wait() != 0:
            raise ClientError(f"the FHIR server stopped with status {process.returncode} (see above)")
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
