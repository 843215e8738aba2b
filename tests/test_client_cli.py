"""`ketamine-cds seed | call | fhir-server`: the CDS client commands, against the real FHIR server."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from jwt.algorithms import ECAlgorithm
from werkzeug.serving import BaseWSGIServer, make_server

from cds_service import client
from cds_service.app import create_app
from cds_service.auth import Authenticator, TrustedIssuer
from cds_service.cli import main
from cds_service.services import PREFETCH
from tests.support.fault_fhir import refused_url
from tests.support.fhir_server import FhirServerHandle

from .conftest import EXAMPLES, ROOT, load_example, make_settings

AT = "2026-05-04T09:00:00Z"
V01 = EXAMPLES / "v01-clear-trd-eligible.json"
V02 = EXAMPLES / "v02-one-failed-trial.json"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def signature(cards: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["source"]["topic"]["code"], c["indicator"]) for c in cards]


def example_signature(app: Flask, name: str) -> list[tuple[str, str]]:
    """The cards of an example request (its own prefetch), through the Flask service."""
    resp = app.test_client().post(f"/cds-services/{load_example(name)['hook']}", json=load_example(name))
    assert resp.status_code == 200, resp.get_json()
    return signature(resp.get_json()["cards"])


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fhir(fhir_server: FhirServerHandle) -> str:
    """The open FHIR server's base URL, holding every example patient."""
    client.seed(client.Fhir(fhir_server.base_url), client.example_files())
    return fhir_server.base_url


@pytest.fixture(scope="module")
def token_fhir(fhir_server_with_token: FhirServerHandle) -> FhirServerHandle:
    fhir = client.Fhir(fhir_server_with_token.base_url, fhir_server_with_token.token)
    client.seed(fhir, client.example_files())
    return fhir_server_with_token


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    app = create_app(make_settings(tmp_path_factory.mktemp("cli")))
    yield app
    app.extensions["ketamine_cds"].store.close()


def serve(app: Flask) -> tuple[BaseWSGIServer, threading.Thread]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="cds-service")
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def service_url(app: Flask) -> Iterator[str]:
    """The service over real HTTP (werkzeug in a thread): its discovery URL."""
    server, thread = serve(app)
    yield f"http://127.0.0.1:{server.server_port}/cds-services"
    server.shutdown()
    thread.join(timeout=5)


# -- seed -------------------------------------------------------------------------------------------
def test_seed_loads_files_and_prints_counts(fhir_server: FhirServerHandle) -> None:
    result = run("seed", "--fhir", fhir_server.base_url, V01, V02)
    assert result.exit_code == 0, result.output
    assert "v01-clear-trd-eligible.json: 36 resources (Patient v01)" in result.stdout
    assert f"Seeded 2 patients, 60 resources into {fhir_server.base_url}" in result.stdout
    patient = requests.get(f"{fhir_server.base_url}/Patient/v02", timeout=10).json()
    assert patient["id"] == "v02"
    # draft orders are not loaded
    assert (
        requests.get(f"{fhir_server.base_url}/MedicationRequest/v01-order-1", timeout=10).status_code == 404
    )


def test_seed_defaults_to_every_example(fhir_server: FhirServerHandle) -> None:
    result = run("seed", "--fhir", fhir_server.base_url)
    assert result.exit_code == 0, result.output
    assert f"Seeded {len(list(EXAMPLES.glob('*.json')))} patients" in result.stdout


def test_seed_with_token(fhir_server_with_token: FhirServerHandle) -> None:
    assert fhir_server_with_token.token
    result = run(
        "seed", "--fhir", fhir_server_with_token.base_url, "--token", fhir_server_with_token.token, V01
    )
    assert result.exit_code == 0, result.output
    assert "Seeded 1 patient, 36 resources" in result.stdout


@pytest.mark.parametrize(
    ("token", "message"),
    [(None, "it wants a bearer token: pass --token"), ("wrong", "invalid bearer token; check --token")],
)
def test_seed_refused_401_says_so(
    fhir_server_with_token: FhirServerHandle, token: str | None, message: str
) -> None:
    args = ["seed", "--fhir", fhir_server_with_token.base_url, V01] + (["--token", token] if token else [])
    result = run(*args)
    assert result.exit_code == 1
    assert "FHIR server refused access (401) for transaction" in result.output
    assert message in result.output


def test_seed_unreachable_server() -> None:
    url = refused_url()
    result = run("seed", "--fhir", url, V01)
    assert result.exit_code == 1
    assert f"FHIR server unreachable at {url}" in result.output


def test_seed_rejects_a_file_that_is_not_fhir(tmp_path: Path, fhir: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    result = run("seed", "--fhir", fhir, bad)
    assert result.exit_code == 1
    assert "bad.json: expected a JSON object" in result.output


# -- call: building the request ---------------------------------------------------------------------
def dry_run(*args: str) -> dict[str, Any]:
    result = run("call", "--dry-run", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_dry_run_request_is_cds_hooks_2_0_1(fhir: str) -> None:
    request = dry_run(
        "--fhir", fhir, "--patient", "v01", "--hook", "order-select", "--preset", "esketamine 56 mg"
    )
    assert request["hook"] == "order-select"
    assert len(request["hookInstance"]) == 36
    assert request["fhirServer"] == fhir
    assert "fhirAuthorization" not in request  # no token, none sent
    context = request["context"]
    assert context["userId"] == "Practitioner/example" and context["patientId"] == "v01"
    order = context["draftOrders"]["entry"][0]["resource"]
    assert context["selections"] == [f"MedicationRequest/{order['id']}"]
    assert order["status"] == "draft" and order["subject"] == {"reference": "Patient/v01"}
    assert order["medicationCodeableConcept"]["coding"][0]["code"] == "2201625"
    assert order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 56
    # the prefetch is the service's own templates run against the server
    assert set(request["prefetch"]) == set(client.InProcessService.templates("order-select")[1])
    assert request["prefetch"]["patient"]["id"] == "v01"
    assert "extension" not in request  # no --at: the service's own clock


def test_dry_run_with_token_sends_fhir_authorization(token_fhir: FhirServerHandle) -> None:
    assert token_fhir.token
    request = dry_run(
        "--fhir",
        token_fhir.base_url,
        "--token",
        token_fhir.token,
        "--patient",
        "v15",
        "--hook",
        "patient-view",
        "--at",
        AT,
    )
    auth = request["fhirAuthorization"]
    assert auth["access_token"] == token_fhir.token and auth["token_type"] == "Bearer"
    assert auth["patient"] == "v15" and "patient/Observation.read" in auth["scope"]
    assert isinstance(auth["expires_in"], int) and auth["subject"]
    assert request["extension"] == {"ketamine-cds.evaluation-time": AT}
    assert "draftOrders" not in request["context"]


def test_ketamine_preset_dose_comes_from_the_latest_weight(fhir: str) -> None:
    request = dry_run(
        "--fhir",
        fhir,
        "--patient",
        "v02",
        "--hook",
        "order-sign",
        "--preset",
        "ketamine-iv-0.5mg-kg",
        "--at",
        AT,
    )
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    want = load_example("v02-one-failed-trial")["context"]["draftOrders"]["entry"][0]["resource"]
    for field in ("medicationCodeableConcept", "dosageInstruction"):
        assert order[field] == want[field], field  # 40 mg = 0.5 mg/kg × 80 kg, over 40 min, as the vignette
    assert order["authoredOn"] == AT


def test_ketamine_preset_without_weight_asks_for_dose(fhir: str) -> None:
    result = run(
        "call",
        "--dry-run",
        "--fhir",
        fhir,
        "--patient",
        "v14",
        "--hook",
        "order-sign",
        "--preset",
        "ketamine IV 0.5 mg/kg",
    )
    assert result.exit_code == 1
    assert "no body weight (LOINC 29463-7)" in result.output and "--dose" in result.output
    request = dry_run(
        "--fhir",
        fhir,
        "--patient",
        "v14",
        "--hook",
        "order-sign",
        "--preset",
        "ketamine IV 0.5 mg/kg",
        "--dose",
        "35 mg",
    )
    dose = request["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0]["doseAndRate"][0]
    assert dose["doseQuantity"]["value"] == 35


def test_order_code_with_dose_and_route(fhir: str) -> None:
    request = dry_run(
        "--fhir",
        fhir,
        "--patient",
        "v01",
        "--hook",
        "order-sign",
        "--order",
        "238082",
        "--dose",
        "30 mg",
        "--route",
        "iv",
        "--minutes",
        "40",
        "--no-prefetch",
    )
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    assert order["medicationCodeableConcept"]["text"] == "Ketamine HCl 50 mg/mL injection"
    assert order["dosageInstruction"][0]["text"] == "30 mg intravenous over 40 min once"
    assert "prefetch" not in request


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hook", "order-sign"], "needs a draft order"),
        (["--hook", "order-sign", "--preset", "nope"], "no preset 'nope'; presets: ketamine-iv-0.5mg-kg"),
        (["--hook", "order-sign", "--order", "abc"], "must be an RxNorm code"),
        (["--hook", "patient-view", "--preset", "esketamine-56mg"], "patient-view takes no draft order"),
        (
            ["--hook", "patient-view", "--in-process", "--service", "http://x/cds-services"],
            "exclude each other",
        ),
        (
            ["--hook", "patient-view", "--service", "http://x", "--jurisdiction", "UK"],
            "works only in-process",
        ),
        (["--hook", "patient-view", "--at", "yesterday"], "not an ISO date-time"),
        (["--hook", "patient-view", "--jwt-iss", "x"], "go together"),
    ],
)
def test_call_usage_errors(fhir: str, args: list[str], message: str) -> None:
    result = run("call", "--fhir", fhir, "--patient", "v01", *args)
    assert result.exit_code != 0
    assert message in result.output


# -- call: in-process -------------------------------------------------------------------------------
def test_call_in_process_gives_the_example_cards(fhir: str, app: Flask) -> None:
    result = run(
        "call",
        "--fhir",
        fhir,
        "--patient",
        "v01",
        "--hook",
        "order-sign",
        "--preset",
        "esketamine-56mg",
        "--at",
        AT,
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert f"prefetch: {len(PREFETCH)} of {len(PREFETCH)} keys filled" in result.stderr
    cards = json.loads(result.stdout)["cards"]
    assert signature(cards) == example_signature(app, "v01-clear-trd-eligible")


def test_call_in_process_prints_cards_as_text(fhir: str, app: Flask) -> None:
    result = run("call", "--fhir", fhir, "--patient", "v15", "--hook", "patient-view", "--at", AT)
    assert result.exit_code == 0, result.output
    topics = [t for t, _ in example_signature(app, "v15-patient-view-course")]
    assert topics, "V15 has cards"
    for topic in topics:
        assert f"rule: {topic} ·" in result.stdout


def test_call_no_cards(fhir: str) -> None:
    result = run(
        "call",
        "--fhir",
        fhir,
        "--patient",
        "v14",
        "--hook",
        "order-sign",
        "--order",
        "312941",
        "--dose",
        "50 mg",
        "--route",
        "oral",
        "--frequency",
        "daily",
        "--at",
        AT,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "No cards."


def test_call_without_prefetch_fetches_with_the_token(token_fhir: FhirServerHandle, app: Flask) -> None:
    assert token_fhir.token
    result = run(
        "call",
        "--fhir",
        token_fhir.base_url,
        "--token",
        token_fhir.token,
        "--no-prefetch",
        "--patient",
        "v02",
        "--hook",
        "order-sign",
        "--preset",
        "ketamine-iv-0.5mg-kg",
        "--at",
        AT,
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert "prefetch:" not in result.stderr
    assert signature(json.loads(result.stdout)["cards"]) == example_signature(app, "v02-one-failed-trial")


def test_call_wrong_token_is_a_412_with_its_message(token_fhir: FhirServerHandle) -> None:
    result = run(
        "call",
        "--fhir",
        token_fhir.base_url,
        "--token",
        "wrong",
        "--no-prefetch",
        "--patient",
        "v01",
        "--hook",
        "order-sign",
        "--preset",
        "esketamine-56mg",
        "--at",
        AT,
    )
    assert result.exit_code == 1
    assert "412 Precondition Failed" in result.output
    assert "answered 401 for" in result.output and "check fhirAuthorization" in result.output
    assert "[missing: " in result.output


def test_call_unreadable_keys_are_omitted_then_412(token_fhir: FhirServerHandle) -> None:
    """Without the token the client can prefetch nothing; it says so, and the service cannot either."""
    result = run(
        "call", "--fhir", token_fhir.base_url, "--patient", "v15", "--hook", "patient-view", "--at", AT
    )
    assert result.exit_code == 1
    assert f"prefetch: 0 of {len(PREFETCH)} keys filled" in result.stderr
    assert "omitted patient: FHIR server refused access (401)" in result.stderr
    assert "412 Precondition Failed" in result.output


def fired_rules(cards: list[dict[str, Any]]) -> set[str]:
    return {r["rule"] for c in cards for r in c["extension"]["ketamine-cds.explanation"]["rules"]}


def test_call_in_process_jurisdiction(fhir: str) -> None:
    """--jurisdiction changes which framework rows apply (V5b: the Norway vignette)."""
    args = [
        "call",
        "--fhir",
        fhir,
        "--patient",
        "v05b",
        "--hook",
        "order-sign",
        "--preset",
        "ketamine-iv-0.5mg-kg",
        "--at",
        AT,
        "--json",
    ]
    us = run(*args, "--jurisdiction", "US")
    no = run(*args, "--jurisdiction", "NO")
    assert us.exit_code == 0 and no.exit_code == 0, (us.output, no.output)
    assert "framework-norway" in fired_rules(json.loads(no.stdout)["cards"])
    assert "framework-norway" not in fired_rules(json.loads(us.stdout)["cards"])


# -- call: over HTTP --------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["", "/order-sign"])
def test_call_service_url_over_http(fhir: str, service_url: str, app: Flask, suffix: str) -> None:
    result = run(
        "call",
        "--fhir",
        fhir,
        "--patient",
        "v01",
        "--hook",
        "order-sign",
        "--preset",
        "esketamine-56mg",
        "--at",
        AT,
        "--json",
        "--service",
        service_url + suffix,
    )
    assert result.exit_code == 0, result.output
    assert signature(json.loads(result.stdout)["cards"]) == example_signature(app, "v01-clear-trd-eligible")


def test_call_service_base_url_finds_discovery(fhir: str, service_url: str) -> None:
    base = service_url.removesuffix("/cds-services")
    result = run(
        "call", "--fhir", fhir, "--patient", "v15", "--hook", "patient-view", "--at", AT, "--service", base
    )
    assert result.exit_code == 0, result.output


def test_call_service_unreachable(fhir: str) -> None:
    url = refused_url("/cds-services")
    result = run("call", "--fhir", fhir, "--patient", "v15", "--hook", "patient-view", "--service", url)
    assert result.exit_code == 1
    assert f"CDS service unreachable at {url}" in result.output


def test_call_service_with_jwt(fhir: str, tmp_path: Path) -> None:
    """A service that requires a JWT: 401 without one (with a hint), cards with a signed one."""
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "use": "sig"}
    issuer = TrustedIssuer(iss="https://ehr.test/cds-client", jwks={"keys": [jwk]})
    settings = make_settings(tmp_path, insecure_no_auth=False, public_base_url="http://127.0.0.1")
    app = create_app(settings, authenticator=Authenticator([issuer]))
    server, thread = serve(app)
    # the audience is the URL actually served, known only once the port is
    app.extensions["ketamine_cds"].settings = dataclasses.replace(
        settings, public_base_url=f"http://127.0.0.1:{server.server_port}"
    )
    pem = tmp_path / "client-key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    url = f"http://127.0.0.1:{server.server_port}/cds-services"
    args = [
        "call",
        "--fhir",
        fhir,
        "--patient",
        "v15",
        "--hook",
        "patient-view",
        "--at",
        AT,
        "--service",
        url,
    ]
    try:
        refused = run(*args)
        assert refused.exit_code == 1
        assert "refused the call (401)" in refused.output and "--jwt-key" in refused.output
        signed = run(
            *args, "--jwt-key", str(pem), "--jwt-iss", "https://ehr.test/cds-client", "--jwt-kid", "k1"
        )
        assert signed.exit_code == 0, signed.output
        wrong_kid = run(
            *args, "--jwt-key", str(pem), "--jwt-iss", "https://ehr.test/cds-client", "--jwt-kid", "k2"
        )
        assert wrong_kid.exit_code == 1 and "(401)" in wrong_kid.output
    finally:
        server.shutdown()
        thread.join(timeout=5)
        app.extensions["ketamine_cds"].store.close()


def test_call_service_that_has_no_such_hook(fhir: str, service_url: str) -> None:
    result = run(
        "call",
        "--fhir",
        fhir,
        "--patient",
        "v15",
        "--hook",
        "patient-view",
        "--service",
        service_url + "/order-sign",
    )
    assert result.exit_code == 1
    assert "is for hook 'order-sign', not 'patient-view'" in result.output


# -- fhir-server ------------------------------------------------------------------------------------
def test_fhir_server_without_npm_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in client.SERVER_FILES:
        shutil.copyfile(client.FHIR_SERVER_DIR / name, tmp_path / name)
    monkeypatch.setattr(client.node_server, "FHIR_SERVER_DIR", tmp_path)
    monkeypatch.setenv(client.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(client.node_server.shutil, "which", lambda name: None)
    result = run("fhir-server", "--seed")
    assert result.exit_code == 1
    assert "npm is not on PATH" in result.output
    assert f"npm ci --prefix {tmp_path}" in result.output


def test_fhir_server_installs_its_packages_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed wheel has no node_modules (and maybe a read-only site-packages): the packages go
    into the user's cache, once per lockfile."""
    bundled = tmp_path / "site-packages" / "fhir_server"
    bundled.mkdir(parents=True)
    for name in client.SERVER_FILES:
        shutil.copyfile(client.FHIR_SERVER_DIR / name, bundled / name)
    bundled.chmod(0o555)
    monkeypatch.setenv(client.CACHE_ENV, str(tmp_path / "cache"))
    said: list[str] = []
    try:
        folder = client.fhir_server_folder(bundled, say=said.append)
        assert folder.parent == tmp_path / "cache" and folder != bundled
        assert (folder / "node_modules" / "@medplum" / "fhir-router").is_dir()
        assert len(said) == 1 and "npm ci" in said[0]
        monkeypatch.setattr(client.node_server.shutil, "which", lambda name: None)  # a second run: no npm
        assert client.fhir_server_folder(bundled, say=said.append) == folder
        assert len(said) == 1
        assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]  # no staging left
    finally:
        bundled.chmod(0o755)


def test_fhir_server_outside_a_checkout_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client.node_server, "FHIR_SERVER_DIR", tmp_path)
    result = run("fhir-server")
    assert result.exit_code == 1
    assert "is incomplete (package.json, package-lock.json, server.mjs missing)" in result.output


def test_fhir_server_runs_seeded_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_service.cli", "fhir-server", "--port", "0", "--seed"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("LISTENING http://127.0.0.1:"), line
        base = line.split(" ", 1)[1]
        assert requests.get(f"{base}/Patient/v15", timeout=10).json()["id"] == "v15"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{base}/metadata", timeout=5)  # the node child is gone too
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
