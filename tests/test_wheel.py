"""The package carries everything it needs: build the sdist, the wheel from the sdist, and a wheel
straight from the source folder (what ``pip install <dir>`` does); install the wheel into a fresh venv
and run ``lint``, ``test-rules``, ``evaluate``, ``serve``, ``fhir-server`` and ``seed`` from an empty
directory, far from any checkout.

One build and one install for the whole module; the dependencies are borrowed from the test venv
unless KETAMINE_CDS_WHEEL_TEST_FULL_INSTALL is set (see ``built``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from importlib import metadata
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
import requests

from cds_service.engine.loader import fingerprint

ROOT = Path(__file__).resolve().parents[1]
PURE = {"KETAMINE_CDS_PURE_PYTHON": "1"}
WHEEL_DATA = {"rules": "cds_service/rules", "fhir_examples": "cds_service/fhir_examples"}
SERVER_FILES = ("package.json", "package-lock.json", "server.mjs")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(cmd: list[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{cmd}: {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def site_packages(prefix: Path) -> Path:
    return prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _source_files() -> list[str]:
    listed = _run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT).stdout.splitlines()
    return [f for f in listed if (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    for rel in _source_files():  # a clean tree: what a fresh clone holds, no build leftovers
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((ROOT / rel).read_bytes())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", *PURE)}
    # the test venv builds, without isolation (setuptools>=77 comes with the [test] extra)
    setuptools = tuple(int(x) for x in metadata.version("setuptools").split(".")[:1])
    assert setuptools >= (77,), "setuptools>=77 needed: .venv/bin/pip install -e '.[test]'"
    hooks = "import sys; from setuptools import build_meta as b; print(getattr(b, sys.argv[1])(sys.argv[2]))"
    py = sys.executable
    sdist_build = _run([py, "-c", hooks, "build_sdist", base / "dist"], cwd=src, env=env)
    sdist = base / "dist" / sdist_build.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(base / "unpacked", filter="data")
    unpacked = next((base / "unpacked").iterdir())
    wheel_build = _run([py, "-c", hooks, "build_wheel", base / "dist"], cwd=unpacked, env=env)
    wheel = base / "dist" / wheel_build.stdout.strip().splitlines()[-1]
    # `pip install <dir>` builds a wheel from the source folder itself, with the same hook; pure
    # Python (one compiled build per run is enough: the file lists are compared, less extensions)
    dir_build = _run([py, "-c", hooks, "build_wheel", base / "from-dir"], cwd=src, env=env | PURE)
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    install = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q"]
    if os.environ.get("KETAMINE_CDS_WHEEL_TEST_FULL_INSTALL"):
        _run([*install, wheel])  # the dependencies too, from the index (25-40 s more)
    else:
        # The dependencies are borrowed from the test environment (a .pth file), so the suite does not
        # reinstall 30 packages each run; ketamine-cds itself comes from the wheel only, and `pip check`
        # proves the wheel's Requires-Dist are met. The checkout stays out of reach: its editable
        # finder is a .pth of the test venv, which a path entry does not run.
        (site_packages(venv) / "_test_dependencies.pth").write_text(f"{site_packages(Path(sys.prefix))}\n")
        _run([*install, "--no-deps", wheel])
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "check"])
    (base / "build.log").write_text("\n".join(r.stdout + r.stderr for r in (sdist_build, wheel_build)))
    return {
        "sdist": sdist,
        "wheel": wheel,
        "dir_wheel": base / "from-dir" / dir_build.stdout.strip().splitlines()[-1],
        "venv": venv,
        "logs": base / "build.log",
        "base": base,
        "src": src,
    }


def test_no_packaging_warnings(built: dict[str, Path]) -> None:
    text = built["logs"].read_text()
    warnings = [
        line
        for line in text.splitlines()
        if re.search(r"warn|deprecat", line, re.I) and "byte-compiling is disabled" not in line
    ]
    assert not warnings, warnings


def test_the_docker_build_context_builds_the_same_wheel(built: dict[str, Path]) -> None:
    """The Dockerfile's build stage runs `pip install .` on what it COPYs: that subset of the
    repository, less what .dockerignore leaves out, must build the very same wheel (no Docker here)."""
    from .test_docker_files import copy_sources, ignored, stages

    context = built["base"] / "docker-context"
    for source in copy_sources(stages()[0]):
        origin = built["src"] / source
        for path in [origin] if origin.is_file() else sorted(origin.rglob("*")):
            rel = path.relative_to(built["src"]).as_posix()
            if path.is_file() and not ignored(rel):
                (context / rel).parent.mkdir(parents=True, exist_ok=True)
                (context / rel).write_bytes(path.read_bytes())
    hooks = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"
    env = dict(os.environ) | PURE  # compiling needs setup.py, which the COPY list is checked to hold
    done = _run([sys.executable, "-c", hooks, built["base"] / "docker-dist"], cwd=context, env=env)
    wheel = built["base"] / "docker-dist" / done.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as from_context, zipfile.ZipFile(built["wheel"]) as reference:
        assert _without_extensions(from_context.namelist()) == _without_extensions(reference.namelist())
    assert "setup.py" in copy_sources(stages()[0])


def test_wheel_and_sdist_carry_the_data_and_every_module(built: dict[str, Path]) -> None:
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
    tracked = _source_files()
    modules = [f for f in tracked if f.startswith("cds_service/") and not f.endswith((".pyc",))]
    missing = [f for f in modules if f not in names]
    for folder, inside in WHEEL_DATA.items():
        missing += [f"{inside}/{f[len(folder) + 1 :]}" for f in tracked if f.startswith(f"{folder}/")]
    missing += [f"cds_service/fhir_server/{n}" for n in SERVER_FILES]
    assert not [m for m in missing if m not in names], [m for m in missing if m not in names]
    assert not [n for n in names if "node_modules" in n or "__pycache__" in n]
    assert "ketamine_cds-0.1.0.dist-info/licenses/LICENSE" in names
    with zipfile.ZipFile(built["dir_wheel"]) as from_dir:  # pip install <dir> is the same
        assert _without_extensions(from_dir.namelist()) == _without_extensions(names)
    with tarfile.open(built["sdist"]) as tar:
        sdist = set(tar.getnames())
    top = next(iter(sdist)).split("/")[0]
    for needed in ("rules/trd.yaml", "rules/valuesets/tca.yaml", "fhir_server/package-lock.json", "LICENSE"):
        assert f"{top}/{needed}" in sdist, needed


def _without_extensions(names: object) -> list[str]:
    return sorted(n for n in names if not n.endswith(tuple(EXTENSION_SUFFIXES)))  # type: ignore[attr-defined]


def _c_compiler() -> str | None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc)


def test_the_wheel_carries_the_compiled_hot_path(
    built: dict[str, Path], installed: dict[str, object]
) -> None:
    """Every module setup.py lists is compiled into the wheel, with its source beside it and its
    hash in the record; the installed command says so. Without a C compiler: pure, and says why."""
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
        record = json.loads(whl.read("cds_service/_compiled.json"))
    listed = re.search(r"^COMPILED = \[(.*?)^\]", (ROOT / "setup.py").read_text(), re.M | re.S)
    assert listed is not None
    modules = re.findall(r'"(cds_service[\w.]+)"', listed.group(1))
    assert len(modules) > 10
    version = _cli(installed, "--version").stdout
    if _c_compiler() is None:
        assert not record["modules"] and "pure Python" in version, version
        return
    assert sorted(record["modules"]) == sorted(modules) and not record["not_compiled"]
    for name in modules:
        path = name.replace(".", "/")
        assert f"{path}.py" in names
        assert any(n.startswith(f"{path}.") and n.endswith(tuple(EXTENSION_SUFFIXES)) for n in names), name
    assert f"compiled hot path: {len(modules)} of {len(modules)} modules" in version, version


def test_metadata(built: dict[str, Path]) -> None:
    with zipfile.ZipFile(built["wheel"]) as whl:
        meta = whl.read("ketamine_cds-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta
    assert "License-File: LICENSE" in meta
    assert "Classifier: Programming Language :: Python :: 3.11" in meta
    assert "Project-URL:" not in meta  # none known to the repository (tests/test_docker_files.py)
    assert (
        "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    )


# -- the installed commands, from an empty directory -----------------------------------------------
@pytest.fixture(scope="module")
def installed(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    empty = tmp_path_factory.mktemp("empty-cwd")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KETAMINE_CDS_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["KETAMINE_CDS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    env["PATH"] = f"{built['venv'] / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {"cwd": empty, "env": env, "exe": str(built["venv"] / "bin" / "ketamine-cds")}


def _cli(
    installed: dict[str, object], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return _run(
        [installed["exe"], *args],  # type: ignore[list-item]
        cwd=cwd or installed["cwd"],
        env=installed["env"],
    )


def _installed_path(installed: dict[str, object], what: str) -> Path:
    code = f"from cds_service import bundled; print(bundled.{what}())"
    py = Path(str(installed["exe"])).with_name("python")
    return Path(_run([py, "-c", code], cwd=installed["cwd"], env=installed["env"]).stdout.strip())


def test_lint_and_test_rules(installed: dict[str, object]) -> None:
    rules = _installed_path(installed, "rules_dir")
    assert "site-packages" in rules.parts and ROOT not in rules.parents
    assert Path(str(installed["exe"])).parent.parent in rules.parents  # the fresh venv's copy
    assert re.match(r"OK: \d+ rules", _cli(installed, "lint").stdout)
    out = _cli(
        installed, "test-rules", "-k", "v04"
    ).stdout  # a few cases: the whole set runs in test_rules.py
    assert re.search(r"^[1-9]\d* passed, 0 failed$", out, re.M), out


def test_evaluate_an_example(installed: dict[str, object], tmp_path: Path) -> None:
    examples = _installed_path(installed, "examples_dir")
    # no silent use of ./rules of the working directory: a broken one there changes nothing
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "trd.yaml").write_text("rules: [ {{ not yaml\n")
    out = _cli(installed, "evaluate", "--json", str(examples / "v04-pregnancy.json"), cwd=tmp_path).stdout
    cards = json.loads(out)["cards"]
    assert cards and cards[0]["indicator"] == "critical"


def _wait_line(process: subprocess.Popen[str], pattern: str, timeout: float) -> re.Match[str]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"no line matching {pattern!r} (exit {process.poll()})")


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_serve_from_anywhere(installed: dict[str, object], stopper: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    process = subprocess.Popen(
        [str(installed["exe"]), "serve", "--dev", "--port", str(port), "--workers", "1"],
        cwd=installed["cwd"],  # type: ignore[arg-type]
        env=installed["env"],  # type: ignore[arg-type]
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    stopper.append(process)
    deadline, health = time.monotonic() + 60, None
    while time.monotonic() < deadline and process.poll() is None:
        try:
            health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
            break
        except requests.RequestException:
            time.sleep(0.3)
    assert health is not None, f"serve exited with {process.poll()}"
    # the installed copy of the rules has the fingerprint of the checkout's: content, not place
    assert health["fingerprint"] == fingerprint(ROOT / "rules", ROOT / "rules" / "site.yaml")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_fhir_server_and_seed(installed: dict[str, object], stopper: list[subprocess.Popen[str]]) -> None:
    process = subprocess.Popen(
        [str(installed["exe"]), "fhir-server", "--port", "0"],
        cwd=installed["cwd"],  # type: ignore[arg-type]
        env=installed["env"],  # type: ignore[arg-type]
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    stopper.append(process)
    base = _wait_line(process, r"^LISTENING (http://\S+/fhir)", timeout=240).group(1)
    cache = Path(installed["env"]["KETAMINE_CDS_CACHE_DIR"])  # type: ignore[index]
    assert [p.name for p in cache.iterdir() if p.name.startswith("fhir-server-")], "npm ci went elsewhere"
    out = _cli(installed, "seed", "--fhir", base).stdout
    assert re.search(r"Seeded \d+ patients", out), out
    assert requests.get(f"{base}/Patient/v01", timeout=10).status_code == 200


READ_ONLY_SCRIPT = r"""
set -e
for d in "$@"; do mount --bind "$d" "$d"; mount -o remount,bind,ro "$d"; done
if touch /tmp/.kcds-write-probe 2>/dev/null; then echo "/tmp is writable" >&2; exit 97; fi
cd /tmp  # read-only: Python's last-resort temporary folder is the working directory
exec "$KCDS_EXE" serve --dev --host 127.0.0.1 --port "$KCDS_PORT" --workers 2
"""


def test_serve_on_a_read_only_filesystem(
    installed: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """What `docker run --read-only` leaves writable: the /data volume and /dev/shm. Every other folder
    (the venv, /tmp, $HOME, the working directory) is remounted read-only in a private mount namespace."""
    if os.geteuid() != 0 or not Path("/usr/bin/unshare").exists() or not Path("/dev/shm").is_dir():
        pytest.skip("needs root, unshare and /dev/shm to remount folders read-only")
    data = Path(tempfile.mkdtemp(prefix="kcds-data-", dir="/dev/shm"))  # the /data volume
    folders = [d for d in ("/tmp", "/var", "/home", "/root", "/opt", "/usr", "/etc", "/srv", "/work")
               if Path(d).is_dir() and not Path(d).is_symlink()]  # fmt: skip
    port = free_port()
    env = dict(installed["env"])  # type: ignore[call-overload]
    env.update(
        HOME="/nonexistent",
        KCDS_EXE=str(installed["exe"]),
        KCDS_PORT=str(port),
        KETAMINE_CDS_DATABASE=str(data / "feedback.sqlite3"),
        KETAMINE_CDS_WORKER_TMP_DIR="/dev/shm",
        KETAMINE_CDS_ACCESS_LOG="-",
    )
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --mount is not permitted here: {probe.stderr.decode()[:200]}")
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", READ_ONLY_SCRIPT, "ro", *folders],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base, health = f"http://127.0.0.1:{port}", None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = requests.get(f"{base}/healthz", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.3)
        assert health is not None and health.status_code == 200, process.poll()
        examples = _installed_path(installed, "examples_dir")
        body = json.loads((examples / "v04-pregnancy.json").read_text())
        cards = requests.post(f"{base}/cds-services/order-sign", json=body, timeout=30).json()["cards"]
        assert cards and cards[0]["indicator"] == "critical"
        fb = {"feedback": [{"card": cards[0]["uuid"], "outcome": "overridden",
                            "overrideReason": {"reason": cards[0]["overrideReasons"][0]},
                            "outcomeTimestamp": "2026-05-04T09:00:00Z"}]}  # fmt: skip
        assert (
            requests.post(f"{base}/cds-services/order-sign/feedback", json=fb, timeout=10).status_code == 200
        )
        assert requests.get(f"{base}/", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        shutil.rmtree(data, ignore_errors=True)
    assert process.returncode == 0, err[-3000:]
    problems = [
        ln
        for ln in err.splitlines()
        if re.search(r"read-only|permission denied|Errno", ln, re.I)
        or (ln.startswith("{") and json.loads(ln)["level"] in ("error", "critical"))
    ]
    assert not problems, problems
    assert any('"event":"http_access"' in ln for ln in out.splitlines())
    assert not Path("/nonexistent").exists()  # nothing wrote to $HOME (the root folder stays writable here)
