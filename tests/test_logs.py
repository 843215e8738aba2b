"""Operational logging: one structured JSON line per CDS call on ``ketamine_cds.calls``, and nothing in
any log line that identifies the patient, repeats clinical content or carries a token.

The app is created inside each test, after ``json_stderr`` has set the process's log handler aside,
so ``create_app`` installs its JSON handler on capsys's stderr: what is asserted is exactly what an
operator's log collector would receive.
"""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import api as api_module
from cds_service.app import create_app
from cds_service.engine.loader import load_ruleset
from cds_service.logs import CALL_LOGGER, JsonFormatter, hash_id, log_call

from .conftest import RULES, CheckedClient, fhir_authorization, load_example, make_settings
from .support.fault_fhir import FaultFhirServer, refused_url

PID = "zq9-patient-4471"  # distinctive, so finding it anywhere in the logs is meaningful
SERVICE = "/cds-services/order-sign"
RULE_IDS = {r.id for r in load_ruleset(RULES).rules}
# drug and diagnosis words of the examples used below; rule ids (rules_fired) may name some of them
CLINICAL_WORDS = [
    "sertraline",
    "venlafaxine",
    "spravato",
    "intranasal",
    "lorazepam",
    "phenelzine",
    "lamotrigine",
    "depressive",
    "psychotic",
    "pregnan",
    "bipolar",
    "esketamine",
    "mg/kg",
]


# -- log capture -----------------------------------------------------------------------------------------


@contextmanager
def running_app(tmp_path: Path, **overrides: Any) -> Iterator[FlaskClient]:
    app: Flask = create_app(make_settings(tmp_path, log_level="INFO", **overrides))
    app.test_client_class = CheckedClient
    try:
        with app.test_client() as c:
            yield c
    finally:
        app.extensions["ketamine_cds"].store.close()


def json_lines(err: str) -> list[dict[str, Any]]:
    """Every stderr line is exactly one JSON object."""
    out = []
    for line in err.splitlines():
        assert line.startswith("{") and line.endswith("}"), line[:300]
        record = json.loads(line)
        assert isinstance(record, dict)
        out.append(record)
    return out


def call_lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("logger") == CALL_LOGGER]


def post(client: FlaskClient, body: Any, path: str = SERVICE, **headers: str) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json", headers=headers)


def request_for(name: str = "v01-clear-trd-eligible", pid: str = PID) -> dict[str, Any]:
    """An example request re-keyed to a distinctive patient id."""
    body = load_example(name)
    old = body["context"]["patientId"]
    text = json.dumps(body).replace(f"Patient/{old}", f"Patient/{pid}")
    body = json.loads(text)
    body["context"]["patientId"] = pid
    body["prefetch"]["patient"]["id"] = pid
    return body


def clinical_strings(body: dict[str, Any]) -> set[str]:
    """Drug and diagnosis names in a request: code texts and displays of every resource."""
    found: set[str] = set()

    def walk(v: Any, key: str = "") -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, k)
        elif isinstance(v, list):
            for x in v:
                walk(x, key)
        elif isinstance(v, str) and key in ("text", "display") and len(v) >= 8:
            found.add(v)

    for part in ("prefetch", "context"):
        walk(body.get(part))
    return found


def without_rule_ids(record: dict[str, Any]) -> str:
    """A log line minus the fields that are rule identifiers by design."""
    return json.dumps({k: v for k, v in record.items() if k not in ("rules_fired",)}).lower()


# -- the call line ---------------------------------------------------------------------------------------
def test_one_json_line_per_call_with_the_documented_fields(
    tmp_path: Path, json_stderr: pytest.CaptureFixture[str]
) -> None:
    body = request_for()
    with running_app(tmp_path) as client:
        json_stderr.readouterr()  # startup lines
        resp = post(client, body, **{"X-Request-ID": "req-one-line-1"})
    assert resp.status_code == 200
    cards = resp.get_json()["cards"]
    lines = call_lines(json_lines(json_stderr.readouterr().err))
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["event"] == "cds_call" and line["level"] == "info"
    assert line["service"] == "order-sign"
    assert line["hookInstance"] == body["hookInstance"]
    assert line["request_id"] == "req-one-line-1" == resp.headers["X-Request-ID"]
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
    assert line["cards"] == len(cards) > 0
    assert line["fhir_fetches"] == 0, "everything was prefetched"
    assert line["patient"] == hash_id(PID)
    fired = line["rules_fired"]
    assert isinstance(fired, list) and fired and all(isinstance(r, str) for r in fired)
    assert set(fired) <= RULE_IDS, set(fired) - RULE_IDS
    own_cards = {c["source"]["topic"]["code"] for c in cards} & RULE_IDS
    assert own_cards <= set(fired), "every rule card shown is among the rules fired"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", line["ts"])


def test_each_call_gets_its_own_line(tmp_path: Path, json_stderr: pytest.CaptureFixture[str]) -> None:
    bodies = [
        request_for(n) for n in ("v01-clear-trd-eligible", "v05-psychosis-history", "v14-not-concerned")
    ]
    with running_app(tmp_path) as client:
        json_stderr.readouterr()
        for b in bodies:
            assert post(client, b).status_code == 200
    lines = call_lines(json_lines(json_stderr.readouterr().err))
    assert [line["hookInstance"] for line in lines] == [b["hookInstance"] for b in bodies]
    assert len({line["request_id"] for line in lines}) == 3, "generated request ids are distinct"
    assert [line["cards"] for line in lines][-1] == 0, "v14 concerns no ketamine decision: no cards"


def test_412_is_one_line_with_the_missing_keys(
    tmp_path: Path, json_stderr: pytest.CaptureFixture[str]
) -> None:
    body = request_for()
    del body["prefetch"]["vitalSigns"]
    with running_app(tmp_path) as client:
        json_stderr.readouterr()
        resp = post(client, body)
    assert resp.status_code == 412
    lines = call_lines(json_lines(json_stderr.readouterr().err))
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["status"] == 412 and line["missing"] == ["vitalSigns"]
    assert line["hookInstance"] == body["hookInstance"] and line["service"] == "order-sign"
    assert line["patient"] == hash_id(PID) and line["request_id"] == resp.headers["X-Request-ID"]
    assert isinstance(line["duration_ms"], int | float)


def test_feedback_is_one_line_without_its_content(
    tmp_path: Path, json_stderr: pytest.CaptureFixture[str]
) -> None:
    comment = "Patient zq9 has bipolar disorder and takes lamotrigine; overriding"
    feedback = {
        "feedback": [
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "outcomeTimestamp": "2026-05-04T10:00:00Z",
                "overrideReason": {
                    "reason": {"code": "specialist-decision", "system": "https://x.test", "display": comment},
                    "userComment": comment,
                },
            }
        ]
    }
    with running_app(tmp_path) as client:
        json_stderr.readouterr()
        resp = post(client, feedback, "/cds-services/order-sign/feedback", **{"X-Request-ID": "fb-1"})
    assert resp.status_code == 200
    err = json_stderr.readouterr().err
    lines = call_lines(json_lines(err))
    assert len(lines) == 1 and lines[0]["event"] == "feedback" and lines[0]["stored"] == 1
    assert lines[0]["request_id"] == "fb-1" and lines[0]["service"] == "order-sign"
    assert "lamotrigine" not in err and "bipolar" not in err and "zq9" not in err


# -- what must never be logged ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "v01-clear-trd-eligible",
        "v04-pregnancy",
        "v05-psychosis-history",
        "v07-daily-lorazepam",
        "v08-phenelzine",
        "v09-lamotrigine",
        "v11-bipolar-depression",
        "v13-missing-data",
    ],
)
def test_no_patient_id_card_text_or_clinical_names_in_any_line(
    tmp_path: Path, json_stderr: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, name: str
) -> None:
    body = request_for(name)
    with running_app(tmp_path) as client:
        caplog.set_level(logging.DEBUG)
        resp = post(client, body)
        assert resp.status_code == 200
        missing = json.loads(json.dumps(body))
        del missing["prefetch"]["conditions"]
        assert post(client, missing).status_code == 412
    cards = resp.get_json()["cards"]
    err = json_stderr.readouterr().err
    records = json_lines(err)
    assert len(call_lines(records)) == 2
    everything = err + "\n" + caplog.text

    assert PID not in everything, "the patient id appears only as its hash"
    assert hash_id(PID) in err
    for card in cards:
        assert card["summary"] not in everything
        for line in (card.get("detail") or "").splitlines():
            if len(line.strip()) > 12:
                assert line.strip() not in everything, line
    names = clinical_strings(body)
    assert names, "the example has drug and diagnosis names to look for"
    for record in records:
        text = without_rule_ids(record)
        for s in names:
            assert s.lower() not in text, (s, record)
        for word in CLINICAL_WORDS:
            assert word not in text, (word, record)


def test_patient_id_not_logged_when_the_fhir_server_fails(
    tmp_path: Path, json_stderr: pytest.CaptureFixture[str], fault_fhir: FaultFhirServer
) -> None:
    """A failed read of ``Patient/<id>`` is a 412 whose reason names the resource: not logged."""
    body = request_for()
    del body["prefetch"]["patient"]
    body["fhirServer"] = fault_fhir.base_url
    fault_fhir.route(f"/Patient/{PID}", "status", status=500)
    with running_app(tmp_path) as client:
        resp = post(client, body)
    assert resp.status_code == 412
    err = json_stderr.readouterr().err
    lines = call_lines(json_lines(err))
    assert len(lines) == 1 and lines[0]["status"] == 412 and lines[0]["missing"] == ["patient"]
    assert PID not in err


def test_invalid_request_logs_nothing_of_its_content(
    tmp_path: Path, json_stderr: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    body = request_for()
    body["context"]["userId"] = f"Device/{PID}"  # not a user type: 400
    with running_app(tmp_path) as client:
        caplog.set_level(logging.DEBUG)
        assert post(client, body).status_code == 400
    assert PID not in json_stderr.readouterr().err + caplog.text


@pytest.mark.parametrize("answer", ["ok", "401", "drop", "refused"])
def test_fhir_access_token_never_logged(
    tmp_path: Path,
    json_stderr: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    fault_fhir: FaultFhirServer,
    answer: str,
) -> None:
    token = "fhir-secret-" + uuid.uuid4().hex
    body = request_for()
    del body["prefetch"]["procedures"]
    body["fhirServer"] = refused_url() if answer == "refused" else fault_fhir.base_url
    body["fhirAuthorization"] = fhir_authorization(token)
    if answer == "ok":
        fault_fhir.route("/Procedure", "ok")
    elif answer == "401":
        fault_fhir.route("/Procedure", "status", status=401)
    else:
        fault_fhir.route("/Procedure", "drop")
    with running_app(tmp_path) as client:
        caplog.set_level(logging.DEBUG)
        resp = post(client, body)
    assert resp.status_code == (200 if answer == "ok" else 412), resp.get_json()
    if answer != "refused":
        sent = fault_fhir.requests_to("/Procedure")
        assert sent and sent[0].headers["Authorization"] == f"Bearer {token}", "the token was used"
    err = json_stderr.readouterr().err
    assert len(call_lines(json_lines(err))) == 1
    everything = err + caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert token not in everything


def test_fhir_access_token_of_an_invalid_request_never_logged(
    tmp_path: Path, json_stderr: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    token = "fhir-secret-" + uuid.uuid4().hex
    body = request_for()
    body["fhirAuthorization"] = fhir_authorization(token)  # without fhirServer: 400
    with running_app(tmp_path) as client:
        caplog.set_level(logging.DEBUG)
        resp = post(client, body)
    assert resp.status_code == 400 and token not in resp.get_data(as_text=True)
    assert token not in json_stderr.readouterr().err + caplog.text


# -- X-Request-ID ----------------------------------------------------------------------------------------
def test_client_request_id_is_logged_echoed_and_sent_to_the_fhir_server(
    tmp_path: Path, json_stderr: pytest.CaptureFixture[str], fault_fhir: FaultFhirServer
) -> None:
    body = request_for()
    del body["prefetch"]["procedures"]
    body["fhirServer"] = fault_fhir.base_url
    fault_fhir.route("/Procedure", "ok")
    with running_app(tmp_path) as client:
        json_stderr.readouterr()
        resp = post(client, body, **{"X-Request-ID": "ehr-req-4f2a-0001"})
    assert resp.status_code == 200
    assert resp.headers["X-Request-ID"] == "ehr-req-4f2a-0001"
    sent = fault_fhir.requests_to("/Procedure")
    assert len(sent) == 1
    assert sent[0].headers["X-Request-ID"] == "ehr-req-4f2a-0001"
    assert sent[0].param("patient") == PID
    line = call_lines(json_lines(json_stderr.readouterr().err))[0]
    assert line["request_id"] == "ehr-req-4f2a-0001"
    assert line["fhir_fetches"] == 1 and line["prefetch"] == {"procedures": "fetched"}
    assert line["status"] == 200


@pytest.mark.parametrize(
    "incoming",
    [None, "", "x" * 65, "réq-ünïcode"],
    ids=["absent", "empty", "too-long", "non-ascii"],
)
def test_generated_request_id_is_used_everywhere(
    tmp_path: Path, json_stderr: pytest.CaptureFixture[str], fault_fhir: FaultFhirServer, incoming: str | None
) -> None:
    body = request_for()
    del body["prefetch"]["procedures"]
    body["fhirServer"] = fault_fhir.base_url
    fault_fhir.route("/Procedure", "ok")
    headers = {} if incoming is None else {"X-Request-ID": incoming}
    with running_app(tmp_path) as client:
        json_stderr.readouterr()
        resp = post(client, body, **headers)
    assert resp.status_code == 200
    generated = resp.headers["X-Request-ID"]
    assert generated != incoming and str(uuid.UUID(generated)) == generated
    assert fault_fhir.requests_to("/Procedure")[0].headers["X-Request-ID"] == generated
    assert call_lines(json_lines(json_stderr.readouterr().err))[0]["request_id"] == generated


# -- the formatter and the hash --------------------------------------------------------------------------
def test_json_formatter_on_an_attached_handler() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(CALL_LOGGER)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        log_call(service="order-sign", hookInstance="h-1", request_id="r-1", rules_fired=["a", "b"], cards=2)
        logging.getLogger("cds_service.test").warning("plain message with %s", "args")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert len(lines) == 1, "only the call logger's line reached this handler"
    assert (
        lines[0]["event"] == "cds_call" and lines[0]["rules_fired"] == ["a", "b"] and lines[0]["cards"] == 2
    )
    assert lines[0]["logger"] == CALL_LOGGER and "msg" not in lines[0]


def _formatted(record: logging.LogRecord) -> dict[str, Any]:
    return json.loads(JsonFormatter().format(record))


def test_call_line_keeps_a_non_string_key_and_writes_it_with_orjson() -> None:
    # the first orjson try has no OPT_NON_STR_KEYS; the second must write the line (json.dumps, the
    # last resort, would write NaN, which is not JSON: orjson writes null)
    record = logging.LogRecord(CALL_LOGGER, logging.INFO, __file__, 1, "cds call", (), None)
    record.fields = {"event": "cds_call", "by_code": {7: 2}, "ratio": float("nan")}
    line = JsonFormatter().format(record)
    assert '"by_code":{"7":2}' in line and '"ratio":null' in line


def test_timestamps_of_lines_in_the_same_and_in_another_second() -> None:
    def stamp(created: float) -> str:
        record = logging.LogRecord(CALL_LOGGER, logging.INFO, __file__, 1, "m", (), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        return _formatted(record)["ts"]

    base = 1_796_155_200  # 2026-12-01T20:00:00Z
    assert stamp(base + 0.25) == "2026-12-01T20:00:00.250Z"
    assert stamp(base + 0.999) == "2026-12-01T20:00:00.999Z"
    assert stamp(base + 61.5) == "2026-12-01T20:01:01.500Z"
    assert stamp(base + 0.5) == "2026-12-01T20:00:00.500Z"  # back to an earlier second


def test_call_lines_follow_the_call_loggers_level_and_filters() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(CALL_LOGGER)
    logger.addHandler(handler)
    old_level, seen = logger.level, []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record)
        return record.fields.get("service") != "dropped"  # type: ignore[attr-defined]

    logger.addFilter(keep)
    try:
        logger.setLevel(logging.WARNING)
        log_call(service="quiet")
        logger.setLevel(logging.INFO)
        log_call(service="dropped")
        log_call(service="kept")
    finally:
        logger.removeFilter(keep)
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert [json.loads(x)["service"] for x in stream.getvalue().splitlines()] == ["kept"]
    assert [r.fields["service"] for r in seen] == ["dropped", "kept"]  # type: ignore[attr-defined]
    assert seen[-1].funcName == "log_call" and seen[-1].pathname.endswith("logs.py")


def test_hash_id() -> None:
    assert hash_id(PID) == hash_id(PID)
    assert re.fullmatch(r"[0-9a-f]{16}", hash_id(PID) or "")
    assert hash_id(PID) != hash_id(PID + "x")
    assert PID not in (hash_id(PID) or "")
    assert hash_id(None) is None and hash_id("") is None


def test_unexpected_error_line_carries_no_request_content(
    tmp_path: Path,
    json_stderr: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug deep in the pipeline whose exception message quotes the record (as ``int('...')`` or
    ``date.fromisoformat('...')`` would) must not put that text into the log."""

    def failing_run(request: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        condition = request["prefetch"]["conditions"]["entry"][0]["resource"]["code"]["text"]
        return int(f"{condition} of {request['context']['patientId']}")  # ValueError quoting both

    monkeypatch.setattr(api_module.pipeline, "run", failing_run)
    body = request_for()
    with running_app(tmp_path) as client:
        caplog.set_level(logging.DEBUG)
        resp = post(client, body)
    assert resp.status_code == 500
    assert resp.get_json()["error"] == "internal error"
    err = json_stderr.readouterr().err
    records = json_lines(err)
    errors = [r for r in records if r.get("level") == "error"]
    assert errors and errors[0]["msg"].startswith("unexpected error"), records
    assert PID not in err, errors
    assert "depressive" not in err.lower(), errors
