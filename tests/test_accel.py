"""The optional compiled hot path (setup.py, cds_service/_accel.py).

* The guard: an extension module is imported only while its source is the one it was built from
  (a fake package: no compiler needed); ``KETAMINE_CDS_PURE_PYTHON=1`` imports every ``.py``.
* The compiled package answers exactly as the pure one: the golden snapshot's requests (every rule
  test case, example, Sandbox capture and benchmark record) run here and in a subprocess with
  ``KETAMINE_CDS_PURE_PYTHON=1``; and a copy of the compiled package with one source edited runs
  that source. Both need a compiled build (``pip install -e .`` with a C compiler, as ``.ci/run``
  does); in a pure-Python checkout they say so and skip.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import cds_service
from cds_service import _accel

ROOT = Path(__file__).resolve().parents[1]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _fake_package(tmp_path: Path, recorded: str | None) -> tuple[Path, _accel.SourceGuard]:
    """pkg/mod.py beside a (fake) extension file; the record holds ``recorded`` as mod.py's hash."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("WHERE = 'source'\n")
    (pkg / f"mod{SUFFIX}").write_bytes(b"not an extension: importing it would fail")
    (pkg / "plain.py").write_text("WHERE = 'plain'\n")
    record = {"modules": {"pkg.mod": recorded}} if recorded else {}
    return pkg, _accel.SourceGuard("pkg", pkg, record, pure=False)


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_unchanged_source_lets_its_extension_be_imported(tmp_path: Path) -> None:
    pkg, guard = _fake_package(tmp_path, "")
    guard.built["pkg.mod"] = _hash(pkg / "mod.py")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert guard.find_spec("pkg.mod", [str(pkg)]) is None  # the usual import: the extension
        assert guard.find_spec("pkg.plain", [str(pkg)]) is None  # no extension: not its business
        assert guard.find_spec("other.mod", [str(pkg)]) is None
    assert not guard.as_source


@pytest.mark.parametrize("case", ["edited", "unrecorded"])
def test_an_edited_or_unrecorded_source_is_imported_instead_with_a_warning(tmp_path: Path, case: str) -> None:
    pkg, guard = _fake_package(tmp_path, "0" * 64 if case == "edited" else None)
    with pytest.warns(RuntimeWarning, match=r"pkg\.mod: its (source changed|compiled module is not)"):
        spec = guard.find_spec("pkg.mod", [str(pkg)])
    assert spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader)
    assert spec.origin == str(pkg / "mod.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.WHERE == "source"
    assert "pkg.mod" in guard.as_source


def test_pure_python_requested_imports_the_source_silently(tmp_path: Path) -> None:
    pkg, _ = _fake_package(tmp_path, "")
    guard = _accel.SourceGuard("pkg", pkg, {"modules": {"pkg.mod": _hash(pkg / "mod.py")}}, pure=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = guard.find_spec("pkg.mod", [str(pkg)])
    assert spec is not None and spec.origin == str(pkg / "mod.py")
    assert _accel.pure_requested({"KETAMINE_CDS_PURE_PYTHON": "1"})
    assert not _accel.pure_requested({"KETAMINE_CDS_PURE_PYTHON": "0"}) and not _accel.pure_requested({})


def test_the_guard_is_ahead_of_the_usual_import() -> None:
    guards = [f for f in sys.meta_path if isinstance(f, _accel.SourceGuard)]
    assert len(guards) == 1 and sys.meta_path.index(guards[0]) < sys.meta_path.index(
        importlib.machinery.PathFinder
    )
    assert _accel.describe()  # says compiled, partly or pure: never raises


def _compiled_here() -> list[str]:
    import cds_service.app  # noqa: F401  (everything the service imports)

    compiled = _accel.compiled_modules()
    if not compiled:
        pytest.skip(f"a pure-Python build ({_accel.describe()}): nothing compiled to compare")
    return compiled


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETAMINE_CDS_")}
    return {**env, **extra}


SNAPSHOT = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/bench"]
import golden
from cds_service import _accel
snap = golden.snapshot(quick=True)
print(json.dumps({"compiled": _accel.compiled_modules(), "snapshot": snap}))
"""


def test_the_compiled_package_answers_as_the_pure_one() -> None:
    compiled = _compiled_here()
    pure = subprocess.run(
        [sys.executable, "-c", SNAPSHOT, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
        env=_env(KETAMINE_CDS_PURE_PYTHON="1", PYTHONPATH=str(ROOT)),
        cwd=ROOT,
    )
    assert pure.returncode == 0, pure.stderr[-3000:]
    other = json.loads(pure.stdout)
    assert other["compiled"] == []  # the subprocess really ran Python only
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    try:
        import golden

        here = json.loads(json.dumps(golden.snapshot(quick=True)))
    finally:
        del sys.path[:2]
    assert set(compiled) <= set(_accel.compiled_modules())
    assert len(here) > 100 and here.keys() == other["snapshot"].keys()
    differing = [k for k in here if here[k] != other["snapshot"][k]]
    assert not differing, differing[:10]


def test_a_copy_with_one_source_edited_runs_that_source(tmp_path: Path) -> None:
    compiled = _compiled_here()
    package = Path(cds_service.__file__).parent
    copy = tmp_path / "cds_service"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    edited, kept = compiled[0], compiled[-1]
    source = copy.joinpath(*edited.split(".")[1:]).with_suffix(".py")
    source.write_text(source.read_text() + "\nEDITED_AFTER_THE_BUILD = True\n")
    probe = (
        "import importlib, json, sys, warnings\n"
        "warnings.simplefilter('always')\n"
        f"a = importlib.import_module({edited!r}); b = importlib.import_module({kept!r})\n"
        "print(json.dumps([a.__file__, getattr(a, 'EDITED_AFTER_THE_BUILD', False), b.__file__]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(PYTHONPATH=str(tmp_path)),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    edited_file, marker, kept_file = json.loads(done.stdout)
    assert edited_file == str(source) and marker is True
    assert kept_file.startswith(str(copy)) and kept_file.endswith(SUFFIX)
    assert f"{edited}: its source changed after it was compiled" in done.stderr
    assert done.stderr.count("its source changed") == 1
