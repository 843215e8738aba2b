"""Fixtures for tests that read the service's JSON log lines from stderr."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``create_app`` sets the root level and may add its handler: undo both afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


@pytest.fixture
def json_stderr(capsys: pytest.CaptureFixture[str]) -> pytest.CaptureFixture[str]:
    """Make the next ``create_app`` install its JSON stderr handler on capsys's stderr.

    ``cds_service.logs.configure`` installs one handler per process, bound to the ``sys.stderr`` of
    the moment; it is set aside here (``restore_logging`` puts it back). capsys's stream changes
    between the setup and call phases, so the app must be created in the test body.
    """
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_ketamine_cds", False)]:
        root.removeHandler(h)
    return capsys
