"""Feedback: validated, stored durably (survives a restart), summarised per rule."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cds_service.app import create_app
from cds_service.cli import main

from .conftest import load_example, make_settings


def _cards(client):
    resp = client.post(
        "/cds-services/order-sign",
        data=json.dumps(load_example("v07-daily-lorazepam")),
        content_type="application/json",
    )
    assert resp.status_code == 200
    return resp.get_json()["cards"]


def test_feedback_persists_across_restart_and_is_counted_per_rule(tmp_path):
    settings = make_settings(tmp_path)
    app = create_app(settings)
    with app.test_client() as c:
        cards = _cards(c)
        warning = next(card for card in cards if card["indicator"] == "warning")
        reason = warning["overrideReasons"][0]
        fb = {
            "feedback": [
                {
                    "card": warning["uuid"],
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-05-04T10:00:00Z",
                    "overrideReason": {
                        "reason": {"code": reason["code"], "system": reason["system"]},
                        "userComment": "ok",
                    },
                },
                {
                    "card": cards[-1]["uuid"],
                    "outcome": "accepted",
                    "outcomeTimestamp": "2026-05-04T10:01:00Z",
                    "acceptedSuggestions": [{"id": "x"}],
                },
            ]
        }
        resp = c.post(
            "/cds-services/order-sign/feedback", data=json.dumps(fb), content_type="application/json"
        )
        assert resp.status_code == 200 and resp.get_json() == {"stored": 2}
    app.extensions["ketamine_cds"].store.close()

    restarted = create_app(settings)  # a new process would see the same file
    stats = {s["rule"]: s for s in restarted.extensions["ketamine_cds"].store.rule_stats()}
    rule = warning["source"]["topic"]["code"]
    assert stats[rule]["overridden"] == 1 and stats[rule]["shown"] == 1
    assert sum(s["accepted"] for s in stats.values()) == 1
    restarted.extensions["ketamine_cds"].store.close()

    out = CliRunner().invoke(main, ["feedback-stats", "--database", str(settings.database)])
    assert out.exit_code == 0, out.output
    assert rule in out.output and "overridden" in out.output
    assert reason["display"] in out.output or reason["code"] in out.output


def test_invalid_feedback_is_400_naming_the_field(client):
    for body, field in [
        ({}, "feedback"),
        (
            {"feedback": [{"card": "u", "outcome": "ignored", "outcomeTimestamp": "2026-05-04T10:00:00Z"}]},
            "feedback[0].outcome",
        ),
        (
            {"feedback": [{"card": "u", "outcome": "accepted", "outcomeTimestamp": "2026-05-04T10:00:00Z"}]},
            "feedback[0].acceptedSuggestions",
        ),
        (
            {"feedback": [{"card": "u", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]},
            "feedback[0].outcomeTimestamp",
        ),
    ]:
        resp = client.post(
            "/cds-services/order-sign/feedback", data=json.dumps(body), content_type="application/json"
        )
        assert resp.status_code == 400, body
        assert resp.get_json()["field"] == field


def test_feedback_for_unknown_service_is_404(client):
    resp = client.post("/cds-services/nope/feedback", data="{}", content_type="application/json")
    assert resp.status_code == 404
