"""The request body as bytes, read from the WSGI input in one piece when its length is stated.

werkzeug's ``get_data`` reads any body through a ``LimitedStream``: 64 KiB chunks, each read into a
fresh ``bytearray``, copied into it, appended to another and copied out again — about five copies
of the body. For a 140 KB order-sign that is ~0.6 M instructions of a call (callgrind). When the
request states a plain ``Content-Length`` (what every CDS client sends), the body is read here with
the same limits and the same errors as werkzeug (tests/test_request_body.py compares the two on
every shape); any other request (chunked, no or an odd length) is read by werkzeug itself.
"""

from __future__ import annotations

from typing import Any

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge


def body_bytes(request_: Any) -> bytes:
    """The body of ``request_`` (a Flask request), as ``request_.get_data(cache=False)`` gives it.

    413 when the stated length is over ``max_content_length``, before reading. Then, as werkzeug:
    an input the server terminates itself (``wsgi.input_terminated``: gunicorn, which ends it at the
    stated length) is read to its end, at most ``max_content_length`` bytes; any other input is read
    to the stated length, and a body shorter than that is ``ClientDisconnected`` (400)."""
    environ = request_.environ
    length = environ.get("CONTENT_LENGTH")
    limit = request_.max_content_length
    terminated = "wsgi.input_terminated" in environ
    if (
        not (isinstance(length, str) and length.isascii() and length.isdigit())
        or "HTTP_TRANSFER_ENCODING" in environ
        or (terminated and limit is None)
    ):
        return request_.get_data(cache=False)
    size = int(length)
    if limit is not None and size > limit:
        raise RequestEntityTooLarge()
    stream = environ["wsgi.input"]
    end = limit if terminated else size
    try:
        data = stream.read(size)
        if terminated or len(data) < size:  # to the input's end: one more (empty) read for gunicorn
            parts = [data]
            got = len(data)
            while got < end:
                more = stream.read(min(end - got, 65_536))
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts) if len(parts) > 1 else data
    except (OSError, ValueError):
        raise ClientDisconnected() from None
    if len(data) < size and not terminated:
        raise ClientDisconnected()
    return data
