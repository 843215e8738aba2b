"""Shared fixtures: an app on the bundled rules, a client whose every CDS response is schema-checked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.validation import schema_validator

pytest_plugins = ["tests.support.fixtures", "tests.support.log_capture", "tests.support.postgres"]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "fhir_examples"
RULES = ROOT / "rules"


def assert_conformant(body: dict[str, Any]) -> None:
    """Every 200 from a service call must validate against the response schema."""
    errors = sorted(schema_validator("response").iter_errors(body), key=str)
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    for card in body["cards"]:
        for s in card.get("suggestions", []):
            for a in s.get("actions", []):
                assert a["type"] != "delete", "suggestions never cancel orders"


class CheckedClient(FlaskClient):
    """Validates every successful CDS service response against the response schema."""

    def open(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        resp = super().open(*args, **kwargs)
        path = args[0] if args and isinstance(args[0], str) else kwargs.get("path", "")
        method = kwargs.get("method", "GET")
        if (
            method == "POST"
            and isinstance(path, str)
            and path.startswith("/cds-services/")
            and not path.endswith("/feedback")
            and resp.status_code == 200
        ):
            assert_conformant(resp.get_json())
        return resp


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = {
        "rules_dir": RULES,
        "database": tmp_path / "feedback.sqlite3",
        "insecure_no_auth": True,
        "allow_time_override": True,
        "hot_reload": False,
        "log_level": "WARNING",
        "fhir_allow_loopback": True,  # the fake and the real test FHIR servers run on 127.0.0.1
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def app(settings: Settings):
    app = create_app(settings)
    app.test_client_class = CheckedClient
    yield app
    app.extensions["ketamine_cds"].store.close()


@pytest.fixture
def client(app) -> Iterator[FlaskClient]:
    with app.test_client() as c:
        yield c


def load_example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def example_names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES.glob("*.json"))


def fhir_authorization(token: str) -> dict[str, Any]:
    """``fhirAuthorization`` as an EHR sends it, for a bearer ``token``."""
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "ketamine-cds",
    }
