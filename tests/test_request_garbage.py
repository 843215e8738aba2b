"""A service call leaves no reference cycles behind (issue 8: the floor's CPU per request).

What a request builds (the parsed prefetch, the record, the facts, the cards) must be freed by
reference counting when the response is sent. A cycle through any of it — a closure kept on a
fact that captures the facts object, say — keeps the whole record alive until the cyclic
collector runs: in a gunicorn worker that was a 25-140 ms collection every ~15 requests, ≈ 3 ms
per request on average, and a heap many requests deep.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import example_names, load_example

# Werkzeug's own, per request, none of ours and nothing large reachable from them: the URL
# matcher's recursive closure (a function, its cells, a tuple), and the WSGI environ that holds its
# Request (``environ["werkzeug.request"]``; the body is read with ``cache=False``, not kept).
LIBRARY_ALLOWANCE = 40


def cyclic_garbage(call: Callable[[], Any]) -> tuple[int, Counter[str]]:
    """(objects only the cyclic collector could free, count by type of ours) left by ``call``."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        call()
        gc.collect()
        ours = Counter(
            f"{type(o).__module__}.{type(o).__qualname__}"
            for o in gc.garbage
            if type(o).__module__.startswith("cds_service")
        )
        return len(gc.garbage), ours
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()


@pytest.mark.parametrize("name", example_names())
def test_a_call_leaves_no_cycles(client, name: str) -> None:
    body = load_example(name)
    path = f"/cds-services/{body['hook']}"
    client.post(path, json=body)  # warm: first-call caches are not garbage

    def call() -> None:
        resp = client.post(path, json=body)
        assert resp.status_code == 200, resp.get_json()

    total, ours = cyclic_garbage(call)
    assert not ours, f"reference cycles through the service's objects: {dict(ours)}"
    assert total <= LIBRARY_ALLOWANCE, f"{total} objects in reference cycles after one call"
