"""The optional compiled hot path: which modules run as Cython-compiled code, and a guard that never
lets a compiled module run in place of a source file that changed after it was built.

``setup.py`` may compile some of this package's ``.py`` files, unchanged, with Cython (the list is
there). It records in ``_compiled.json``, next to this file, the SHA-256 of each source it compiled
and why anything was not compiled. Python's own import system prefers an extension module to the
``.py`` beside it, so :class:`SourceGuard` (installed by ``cds_service/__init__.py``, ahead of it)
decides for every submodule of this package that has an extension file beside its source:

* the source's hash is the one recorded at build → the extension is imported;
* the source changed, or the extension is not in the record (an older or foreign build) → the
  ``.py`` is imported, with one warning naming the module (rebuild: ``pip install -e .``);
* ``KETAMINE_CDS_PURE_PYTHON=1`` → every ``.py`` is imported (at build, it compiles nothing).

Nothing here is needed for the service to work: without a record, or without extension files,
every module is plain Python, as in a pure build. :func:`describe` says which case applies.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

PACKAGE = __name__.rpartition(".")[0]
HERE = Path(__file__).resolve().parent
RECORD = "_compiled.json"
PURE_ENV = "KETAMINE_CDS_PURE_PYTHON"
_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def pure_requested(environ: Any = os.environ) -> bool:
    """Whether ``KETAMINE_CDS_PURE_PYTHON`` asks for plain Python (anything but empty or ``0``)."""
    return environ.get(PURE_ENV, "") not in ("", "0")


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_record(package_dir: Path = HERE) -> dict[str, Any]:
    """The build's record (``{}`` when there is none or it cannot be read: no module is trusted)."""
    try:
        record = json.loads((package_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


class SourceGuard:
    """A meta-path finder for this package's submodules: the ``.py`` instead of an extension module
    that is stale, unrecorded or unwanted; ``None`` (the usual import) otherwise."""

    def __init__(self, package: str, package_dir: Path, record: dict[str, Any], pure: bool) -> None:
        self.prefix = package + "."
        self.package_dir = package_dir
        modules = record.get("modules")
        self.built: dict[str, str] = modules if isinstance(modules, dict) else {}
        self.pure = pure
        self.as_source: dict[str, str] = {}  # module → why its .py was imported instead
        self._listings: dict[str, frozenset[str]] = {}

    def _listing(self, folder: str) -> frozenset[str]:
        names = self._listings.get(folder)
        if names is None:
            try:
                names = frozenset(os.listdir(folder))
            except OSError:
                names = frozenset()
            self._listings[folder] = names
        return names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if not fullname.startswith(self.prefix) or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for folder in path:
            names = self._listing(folder)
            if leaf + ".py" not in names:
                if leaf in names:  # a subpackage: the usual import
                    return None
                continue
            extension = next((leaf + s for s in _EXTENSION_SUFFIXES if leaf + s in names), None)
            if extension is None:
                return None
            source = Path(folder) / (leaf + ".py")
            why = self.reason(fullname, source)
            if why is None:
                return None
            if not self.pure:
                warnings.warn(
                    f"{fullname}: {why}; running its Python source instead of the compiled module "
                    f"{extension} (rebuild with `pip install -e .`, or set {PURE_ENV}=1)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self.as_source[fullname] = why
            return importlib.util.spec_from_file_location(fullname, source)
        return None

    def reason(self, fullname: str, source: Path) -> str | None:
        """Why the compiled module must not be imported (``None``: it may)."""
        if self.pure:
            return f"{PURE_ENV} is set"
        built = self.built.get(fullname)
        if built is None:
            return "its compiled module is not in this build's record"
        try:
            current = source_hash(source)
        except OSError:
            return "its source cannot be read"
        if current != built:
            return "its source changed after it was compiled"
        return None


_guard: SourceGuard | None = None


def install() -> None:
    """Put the guard ahead of the usual import system (once; called by the package's ``__init__``)."""
    global _guard
    if _guard is None:
        _guard = SourceGuard(PACKAGE, HERE, read_record(), pure_requested())
        sys.meta_path.insert(0, _guard)


def compiled_modules() -> list[str]:
    """This package's imported modules that run as compiled code."""
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if name.startswith(PACKAGE + ".")
        and isinstance(getattr(module, "__spec__", None), ModuleSpec)
        and isinstance(module.__spec__.loader, importlib.machinery.ExtensionFileLoader)
    )


def status() -> dict[str, Any]:
    """What the build compiled and what runs: ``compiled`` (modules whose compiled form is used, or
    would be on import), ``source`` (compiled at build, run as Python, with why), ``not_compiled``
    (the build's reasons), ``pure_requested``."""
    record = read_record()
    guard = _guard or SourceGuard(PACKAGE, HERE, record, pure_requested())
    compiled, source = [], {}
    for name in sorted(guard.built):
        py = HERE.joinpath(*name.split(".")[1:]).with_suffix(".py")
        why = guard.as_source.get(name) or guard.reason(name, py)
        if why is None and not any(py.with_suffix(s).exists() for s in _EXTENSION_SUFFIXES):
            why = "its compiled module is missing"
        if why is None:
            compiled.append(name)
        else:
            source[name] = why
    not_compiled = record.get("not_compiled")
    return {
        "compiled": compiled,
        "source": source,
        "not_compiled": not_compiled if isinstance(not_compiled, dict) else {},
        "build_note": str(record.get("note") or ""),
        "pure_requested": guard.pure,
    }


def describe() -> str:
    """One line for ``--version`` and the start-up log: compiled, partly compiled or pure, and why."""
    st = status()
    done, source, missing = len(st["compiled"]), st["source"], st["not_compiled"]
    if st["pure_requested"]:
        return f"pure Python ({PURE_ENV} is set)"
    if not done:
        if source:
            return f"pure Python (all {len(source)} compiled modules stale or missing: rebuild)"
        return f"pure Python ({st['build_note'] or 'built without the compiled hot path'})"
    line = f"compiled hot path: {done} of {done + len(source) + len(missing)} modules"
    if source:
        line += f"; as Python (source changed or unrecorded): {', '.join(sorted(source))}"
    if missing:
        line += f"; not compiled at build: {', '.join(sorted(missing))}"
    return line
