"""pytest fixtures for FHIR peers. Register them in `tests/conftest.py` with

    pytest_plugins = ["tests.support.fixtures"]

(importing them by name into conftest.py also works, but then pytest warns that this module was
imported before it could rewrite it, since tests/test_fhir_server_support.py names it as a plugin).

The two real servers are session-scoped and shared by every test: load data with
`fhir_server.put_resources([...])` under patient ids of the test's own, and never rely on a server
being empty. When the Node packages are not installed the fixtures fail with the install command
(`npm ci --prefix fhir_server`); set KETAMINE_CDS_SKIP_NODE=1 to skip those tests instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from .fault_fhir import FaultFhirServer
from .fhir_server import FhirServerError, FhirServerHandle, check_installed, start_fhir_server

SKIP_NODE_ENV = "KETAMINE_CDS_SKIP_NODE"


def _require_node_server() -> None:
    try:
        check_installed()
    except FhirServerError as exc:
        if os.environ.get(SKIP_NODE_ENV):
            pytest.skip(str(exc))
        raise


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirServerHandle]:
    """An open (no token) in-memory FHIR R4 server, shared by the whole session."""
    _require_node_server()
    with start_fhir_server() as server:
        yield server


@pytest.fixture(scope="session")
def fhir_server_with_token() -> Iterator[FhirServerHandle]:
    """A FHIR server that wants `Authorization: Bearer <fhir_server_with_token.token>`."""
    _require_node_server()
    with start_fhir_server(token=secrets.token_urlsafe(24)) as server:
        yield server


@pytest.fixture
def fault_fhir() -> Iterator[FaultFhirServer]:
    """A fresh scripted fake FHIR server for one test (see `tests.support.fault_fhir`)."""
    with FaultFhirServer() as server:
        yield server
