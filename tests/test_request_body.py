"""cds_service/request_body.body_bytes reads a body with a plain Content-Length itself (one read,
not werkzeug's chunked copies): for every shape of request it must give what werkzeug's
``get_data(cache=False)`` gives — the same bytes, or the same error (413 before reading, a short
body as ClientDisconnected) — over streams like the test client's (BytesIO), gunicorn's (read only,
terminated) and a server's that hands the body over in pieces. Then through the app: a call, a
chunked call, a body over the limit, a body shorter than stated."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from flask import Flask, Request
from flask.testing import FlaskClient

from cds_service.request_body import body_bytes

from .conftest import load_example

LIMIT = 1_000
BODY = b'{"hook": "order-sign", "padding": "' + b"x" * 300 + b'"}'


class ReadOnly:
    """A ``wsgi.input`` with ``read`` only (as gunicorn's Body), at most ``step`` bytes a read."""

    def __init__(self, data: bytes, step: int | None = None, fail_after: int | None = None) -> None:
        self._data, self._pos, self._step, self._fail_after = data, 0, step, fail_after
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self._fail_after is not None and self._pos >= self._fail_after:
            raise OSError("connection reset")
        size = len(self._data) - self._pos if size is None or size < 0 else size
        if self._step is not None:
            size = min(size, self._step)
        out = self._data[self._pos : self._pos + size]
        self._pos += len(out)
        return out


STREAMS = {
    "BytesIO": lambda data: io.BytesIO(data),
    "read only": lambda data: ReadOnly(data),
    "in pieces": lambda data: ReadOnly(data, step=7),
    "fails midway": lambda data: ReadOnly(data, step=50, fail_after=100),
}

LENGTHS = {
    "exact": str(len(BODY)),
    "shorter than sent": str(len(BODY) - 10),
    "longer than sent": str(len(BODY) + 10),
    "zero": "0",
    "over the limit": str(LIMIT + 1),
    "at the limit": str(LIMIT),
    "spaces": f" {len(BODY)} ",
    "plus sign": f"+{len(BODY)}",
    "negative": "-5",
    "not a number": "abc",
    "non-ASCII digits": "\u0663\u0660\u0660",
    "empty": "",
    "absent": None,
}


def _environ(length: str | None, stream: Any, terminated: bool, chunked: bool) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/x",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "CONTENT_TYPE": "application/json",
        "wsgi.input": stream,
    }
    if length is not None:
        environ["CONTENT_LENGTH"] = length
    if terminated:
        environ["wsgi.input_terminated"] = True
    if chunked:
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    return environ


def _outcome(read: Any, environ: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "bytes", read(Request(environ))
    except Exception as exc:  # the type of error is what is compared
        return "error", type(exc).__name__


@pytest.fixture(scope="module")
def bare_app() -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = LIMIT
    return app


@pytest.mark.parametrize("chunked", [False, True], ids=["", "chunked"])
@pytest.mark.parametrize("terminated", [False, True], ids=["not terminated", "terminated"])
@pytest.mark.parametrize("stream", list(STREAMS))
@pytest.mark.parametrize("length", list(LENGTHS))
def test_what_werkzeug_reads(
    bare_app: Flask, length: str, stream: str, terminated: bool, chunked: bool
) -> None:
    with bare_app.app_context():
        ours = _outcome(body_bytes, _environ(LENGTHS[length], STREAMS[stream](BODY), terminated, chunked))
        theirs = _outcome(
            lambda r: r.get_data(cache=False),
            _environ(LENGTHS[length], STREAMS[stream](BODY), terminated, chunked),
        )
    assert ours == theirs


@pytest.mark.parametrize("terminated", [False, True], ids=["not terminated", "terminated"])
def test_a_stated_length_is_read_in_one_read(bare_app: Flask, terminated: bool) -> None:
    """What the module is for: werkzeug's LimitedStream reads in 64 KiB steps (and once more); a
    terminated input is read once more here too, to see its end."""
    body = b"[" + b"1," * 100_000 + b"1]"
    bare_app.config["MAX_CONTENT_LENGTH"] = 10 * len(body)
    try:
        with bare_app.app_context():
            ours, theirs = ReadOnly(body), ReadOnly(body)
            assert body_bytes(Request(_environ(str(len(body)), ours, terminated, False))) == body
            assert Request(_environ(str(len(body)), theirs, terminated, False)).get_data(cache=False) == body
    finally:
        bare_app.config["MAX_CONTENT_LENGTH"] = LIMIT
    assert ours.reads == 1 + terminated and theirs.reads > 3


def test_through_the_app_a_call_a_chunked_call_and_a_short_body(client: FlaskClient) -> None:
    body = orjson.dumps(load_example("v01-clear-trd-eligible"))
    plain = client.post("/cds-services/order-sign", data=body, content_type="application/json")
    assert plain.status_code == 200 and plain.get_json()["cards"]
    chunked = client.post(
        "/cds-services/order-sign",
        input_stream=io.BytesIO(body),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert chunked.status_code == 200
    summaries = [c["summary"] for c in plain.get_json()["cards"]]
    assert [c["summary"] for c in chunked.get_json()["cards"]] == summaries
    short = client.post(
        "/cds-services/order-sign",
        input_stream=io.BytesIO(body[:-20]),
        headers={"Content-Type": "application/json", "Content-Length": str(len(body))},
    )
    assert short.status_code == 400
