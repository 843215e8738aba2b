"""Build hook for the optional compiled hot path; the project itself is described in pyproject.toml.

The modules in ``COMPILED`` are compiled, as they are (the same ``.py`` files, plain Python), by
Cython into extension modules: ``pip install .``, ``pip install -e .`` and the wheel all do it when
Cython (a build requirement only) and a C compiler are there. The ``.py`` files ship too, and the
package runs the same without any extension (tests/test_accel.py compares both).

Compiling is never required: no Cython, no compiler, a module that fails to compile, or
``KETAMINE_CDS_PURE_PYTHON=1`` at build → those modules stay plain Python, a warning says so at
build, and ``ketamine-cds --version`` (and the ``serve`` start-up log line) says so at run time.
The build writes ``cds_service/_compiled.json``: the SHA-256 of every source it compiled (the run-time
guard in cds_service/_accel.py imports the ``.py`` of a module whose source changed since) and why
anything was not compiled.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
RECORD = "cds_service/_compiled.json"
PURE_ENV = "KETAMINE_CDS_PURE_PYTHON"

# The compiled modules: the request's hot path, chosen by measurement (docs/building.md): those with
# at least ~0.5 % of an order-sign call's Python time. Compiling the 27 others the call runs gained
# nothing measurable; modules run once at start-up gain nothing.
COMPILED = [
    "cds_service.cards",
    "cds_service.gc_policy",
    "cds_service.pipeline",
    "cds_service.api",
    "cds_service.validation",
    "cds_service.engine.evaluate",
    "cds_service.engine.predicates.core",
    "cds_service.engine.predicates.dosing",
    "cds_service.engine.predicates.logic",
    "cds_service.engine.predicates.medications",
    "cds_service.engine.predicates.observations",
    "cds_service.engine.predicates.trd",
    "cds_service.engine.predicates.trd_scores",
    "cds_service.engine.predicates.views",
    "cds_service.reading.conditions",
    "cds_service.reading.datatypes",
    "cds_service.reading.dosage",
    "cds_service.reading.element_dates",
    "cds_service.reading.element_walk",
    "cds_service.reading.fhir_client",
    "cds_service.reading.kept",
    "cds_service.reading.medication_records",
    "cds_service.reading.medication_use",
    "cds_service.reading.observations",
    "cds_service.reading.prefetch",
    "cds_service.reading.raw",
    "cds_service.reading.record",
    "cds_service.reading.terminology",
]

# The same language as CPython's: annotations are not C types (a wrong hint must not change a
# value), functions are ordinary function objects (introspection, monkeypatching in tests).
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True}


def _warn(message: str) -> None:
    print(f"WARNING: ketamine-cds: {message}", file=sys.stderr)


def _pure_requested() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """``build_ext`` that compiles what it can, leaves the rest as Python, and writes the record."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:  # one compiler per CPU
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        self.not_compiled: dict[str, str] = {}
        self.note = ""
        # hashed before compiling: the record names the very text each extension was built from
        self.hashes = {n: hashlib.sha256((ROOT / _source(n)).read_bytes()).hexdigest() for n in COMPILED}
        if _pure_requested():
            self.note = f"{PURE_ENV} was set at build"
            self._skip_all(self.note)
        else:
            try:
                from Cython.Build import cythonize
            except ImportError as exc:
                self.note = f"Cython was not available at build ({exc})"
                self._skip_all(self.note)
            else:
                temp = Path(self.build_temp) / "cython"
                try:
                    translated = cythonize(
                        self.extensions,
                        build_dir=str(temp),  # the generated C stays out of the source tree
                        compiler_directives=DIRECTIVES,
                        quiet=True,
                        nthreads=self.parallel or 1,
                    )
                    # the C files replace the sources on the objects finalize_options prepared
                    c_sources = {ext.name: ext.sources for ext in translated}
                    for ext in self.extensions:
                        ext.sources = c_sources[ext.name]
                except Exception as exc:  # a Cython error: the whole set stays Python
                    self.note = f"Cython failed ({type(exc).__name__})"
                    self._skip_all(self.note)
        if self.extensions:
            super().run()
        self._write_record()

    def _skip_all(self, why: str) -> None:
        for ext in self.extensions:
            self.not_compiled[ext.name] = why
        self.extensions = []
        _warn(f"{why}: installing the pure-Python package (correct, slower)")

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "unix":
            for ext in self.extensions:
                # no debug information (a quarter of the size); no warnings about C that Cython generated
                ext.extra_compile_args = [*ext.extra_compile_args, "-g0", "-w"]
        super().build_extensions()
        # what failed is dropped before the in-place copy (pip install -e .) looks for its file
        self.extensions = [ext for ext in self.extensions if ext.name not in self.not_compiled]

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # no compiler, no Python headers, a compiler error
            self.not_compiled[ext.name] = f"the C compiler failed ({type(exc).__name__})"
            _warn(f"{ext.name} not compiled ({exc}); it runs as Python")

    def _write_record(self) -> None:
        modules = {n: h for n, h in self.hashes.items() if n not in self.not_compiled and not self.note}
        record = {"modules": modules, "not_compiled": self.not_compiled, "note": self.note}
        text = json.dumps(record, indent=1, sort_keys=True) + "\n"
        targets = [Path(self.build_lib) / RECORD]
        if self.inplace or getattr(self, "editable_mode", False):
            targets.append(ROOT / RECORD)
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), str(Path(self.build_lib) / RECORD)]


def _source(name: str) -> str:
    return name.replace(".", "/") + ".py"


setup(
    ext_modules=[Extension(name, [_source(name)]) for name in COMPILED],
    cmdclass={"build_ext": OptionalBuildExt},
)
