"""The data shipped with the service: the rule set, the example requests and the FHIR test server.

In git they are the top-level folders ``rules/``, ``fhir_examples/`` and ``fhir_server/``;
pyproject.toml maps them into the package as ``cds_service.rules``, ``cds_service.fhir_examples``
and ``cds_service.fhir_server``, so a wheel, an sdist build and an editable install all find them
here, through importlib.resources. Nothing falls back to the working directory: a service started
in some folder serves the rules it was installed with, or the ``--rules`` it was given.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

RULES = "cds_service.rules"
EXAMPLES = "cds_service.fhir_examples"
FHIR_SERVER = "cds_service.fhir_server"


class BundledDataMissing(RuntimeError):
    """The installation lacks a data package (an old editable install, or a broken wheel)."""


def _folder(package: str) -> Path:
    try:
        root = resources.files(package)
    except ModuleNotFoundError as exc:
        raise BundledDataMissing(
            f"{package} is not installed: reinstall ketamine-cds (in a checkout: pip install -e .)"
        ) from exc
    if not isinstance(root, Path) or not root.is_dir():
        # a zipped install would need extraction; the service reads its data as files
        raise BundledDataMissing(f"{package} is not a folder on disk ({root}): install ketamine-cds unzipped")
    return root


def rules_dir() -> Path:
    """The bundled rule set (rules, value sets, terminology, site.yaml and the rule tests)."""
    return _folder(RULES)


def examples_dir() -> Path:
    """The worked example requests (``fhir_examples/*.json``)."""
    return _folder(EXAMPLES)


def fhir_server_dir() -> Path:
    """The FHIR test server's ``package.json``, ``package-lock.json`` and ``server.mjs``."""
    return _folder(FHIR_SERVER)
