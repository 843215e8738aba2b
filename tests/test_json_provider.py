"""The orjson JSON provider writes what Flask's own provider wrote (cds_service/json_provider.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid

from flask import Flask, jsonify
from markupsafe import Markup

from cds_service.json_provider import OrjsonProvider


@dataclasses.dataclass
class Point:
    x: int


def _app() -> Flask:
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    return app


VALUE = {
    "text": "Ketamin – «norsk» ✓",
    "n": [1, 2.5, -3, True, None],
    "when": dt.datetime(2026, 5, 4, 9, 0, tzinfo=dt.UTC),
    "day": dt.date(2026, 5, 4),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "point": Point(1),
    "html": Markup("<b>x</b>"),
    7: "int key",
    "huge": 2**70,  # beyond orjson: the standard library writes it
}


def test_same_json_as_flasks_provider() -> None:
    app = _app()
    reference = Flask(__name__)
    reference.json.sort_keys = False  # type: ignore[attr-defined]
    with app.app_context():
        ours = jsonify(VALUE)
    with reference.app_context():
        theirs = jsonify(VALUE)
    assert json.loads(ours.get_data()) == json.loads(theirs.get_data())
    assert ours.mimetype == "application/json"
    assert ours.get_data().endswith(b"\n")


def test_fast_path_is_compact_utf8_in_insertion_order() -> None:
    app = _app()
    with app.app_context():
        body = jsonify({"b": "✓", "a": [1, {"z": 1, "y": 2}]}).get_data()
    assert body == '{"b":"✓","a":[1,{"z":1,"y":2}]}\n'.encode()
    assert app.json.dumps({"when": dt.date(2026, 5, 4)}) == '{"when":"Mon, 04 May 2026 00:00:00 GMT"}'


def test_keyword_arguments_use_the_standard_library() -> None:
    app = _app()
    assert app.json.dumps({"a": 1}, indent=2) == '{\n  "a": 1\n}'


def test_a_non_string_key_is_still_written_by_orjson() -> None:
    # the fast path's first try has no OPT_NON_STR_KEYS: an int key must reach the second try, not
    # the standard library (which would write NaN, not JSON, where orjson writes null)
    app = _app()
    with app.app_context():
        body = jsonify({7: "int key", "f": float("nan"), "nested": [{1: True}]}).get_data()
    assert body == b'{"7":"int key","f":null,"nested":[{"1":true}]}\n'
