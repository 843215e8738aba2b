"""Shown-card rows are batched (cds_service/storage/shown_buffer.py) and never lost on a graceful
stop: one transaction for many calls, flushed by time, by count, by close, at exit and for stats."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from cds_service.app import create_app
from cds_service.storage import StorageUnavailable, open_storage
from cds_service.storage.shown_buffer import ShownCardBuffer

from .conftest import load_example, make_settings
from .support.serve_process import ServeProcess


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM shown_cards").fetchone()[0]


def test_calls_share_one_transaction_written_within_the_delay(tmp_path: Path) -> None:
    writes: list[int] = []
    buffer = ShownCardBuffer(lambda rows: writes.append(len(rows)), max_delay=0.2)
    for i in range(5):
        buffer.add([(f"u{i}", "order-sign", "rule", "info", "h", 0.0)] * 2)
    assert writes == []  # nothing written per call
    deadline = time.monotonic() + 5
    while not writes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writes == [10]
    buffer.close()


def test_each_batch_wakes_the_writer_again(tmp_path: Path) -> None:
    # add() sets the wake-up and full events only when they are clear; a flush clears them, so the
    # rows of every later batch must still be written by the thread, by time and by count
    writes: list[int] = []
    buffer = ShownCardBuffer(lambda rows: writes.append(len(rows)), max_delay=0.1, max_rows=3)

    def written(n: int) -> None:
        deadline = time.monotonic() + 5
        while len(writes) < n and time.monotonic() < deadline:
            time.sleep(0.02)

    for batch in range(3):
        buffer.add([("a",)])
        buffer.add([("b",)])
        written(batch + 1)
        assert writes == [2] * (batch + 1)
    buffer.max_delay = 60  # from now on only a full batch is written without waiting
    buffer.add([("c",)] * 2)
    buffer.add([("d",)])
    written(4)
    assert writes == [2, 2, 2, 3]
    buffer.close()


def test_many_rows_are_written_at_once_and_close_writes_the_rest() -> None:
    writes: list[int] = []
    buffer = ShownCardBuffer(lambda rows: writes.append(len(rows)), max_delay=60, max_rows=4)
    buffer.add([("a",)] * 3)
    buffer.add([("b",)] * 2)  # 5 ≥ max_rows: the thread writes without waiting a minute
    deadline = time.monotonic() + 10
    while not writes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writes == [5]
    buffer.add([("c",)] * 17)  # ≥ 4 × max_rows pending: written by this call
    assert writes == [5, 17]
    buffer.add([("d",)])
    buffer.close()
    assert writes == [5, 17, 1] and buffer.pending() == 0


def test_a_failed_write_is_kept_for_the_next_flush() -> None:
    written: list[tuple] = []
    down = [True]

    def write(rows: list[tuple]) -> None:
        if down[0]:
            raise StorageUnavailable("sqlite: OperationalError")
        written.extend(rows)

    buffer = ShownCardBuffer(write, max_delay=60)
    buffer.add([("a",), ("b",)])
    buffer.flush()
    assert written == [] and buffer.pending() == 2
    down[0] = False
    buffer.add([("c",)])
    buffer.flush()
    assert written == [("a",), ("b",), ("c",)]
    buffer.close()


def test_shown_cards_of_served_calls_are_counted_and_survive_close(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = create_app(settings)
    body = load_example("v07-daily-lorazepam")
    with app.test_client() as c:
        shown = sum(len(c.post("/cds-services/order-sign", json=body).get_json()["cards"]) for _ in range(3))
    store = app.extensions["ketamine_cds"].store
    assert shown and sum(s["shown"] for s in store.rule_stats()) == shown  # stats flush first
    with app.test_client() as c:
        shown += len(c.post("/cds-services/order-sign", json=body).get_json()["cards"])
    store.close()
    assert _rows(settings.database) == shown


def test_rows_pending_at_interpreter_exit_are_written(tmp_path: Path) -> None:
    """A gunicorn worker's graceful end is sys.exit: the atexit flush writes what is pending."""
    db = tmp_path / "exit.sqlite3"
    script = (
        "from cds_service.storage import open_storage\n"
        f"s = open_storage({str(db)!r})\n"
        "s.feedback.shown.max_delay = 3600\n"
        "cards = [('u1', 'rule-a', 'info'), ('u2', 'rule-b', 'warning')]\n"
        "s.feedback.record_shown('order-sign', 'h', cards)\n"
        "assert s.feedback.shown.pending() == 2\n"
        "raise SystemExit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert _rows(db) == 2
    open_storage(db).close()


def test_a_gunicorn_stop_right_after_the_calls_loses_no_shown_card(tmp_path: Path) -> None:
    """SIGTERM to the real ``serve`` (gevent workers, rows held for an hour, so only the workers'
    exit can write them): every card returned is in the database once the server has stopped."""
    db = tmp_path / "served.sqlite3"
    launcher = (
        "import sys; import cds_service.storage.shown_buffer as b; b.MAX_DELAY_SECONDS = 3600; "
        "from cds_service.cli import main; main(sys.argv[1:])"
    )
    server = ServeProcess(
        tmp_path, "--dev", "--database", str(db), command=[sys.executable, "-c", launcher, "serve"]
    )
    server.wait_ready()
    body = load_example("v07-daily-lorazepam")
    try:
        with requests.Session() as http:
            returned = 0
            for _ in range(6):
                body["hookInstance"] = str(uuid.uuid4())
                resp = http.post(f"{server.url}/cds-services/order-sign", json=body, timeout=30)
                assert resp.status_code == 200, resp.text
                returned += len(resp.json()["cards"])
        assert _rows(db) == 0  # all still pending: nothing was written per call
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.log()
    assert returned and _rows(db) == returned, server.log()


def test_a_forked_child_starts_empty_and_writes_its_own_rows(tmp_path: Path) -> None:
    """gunicorn forks after create_app: the child has its own rows and thread, none of the parent's."""
    written: list[tuple] = []
    buffer = ShownCardBuffer(written.extend, max_delay=3600)
    buffer.add([("parent",)])
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if it starts empty and flushes its own row
        ok = buffer.pending() == 0
        buffer.add([("child",)])
        buffer.flush()
        os._exit(0 if ok and written == [("child",)] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert buffer.pending() == 1
    buffer.close()
    assert written == [("parent",)]


def test_an_unexpected_write_error_keeps_the_rows_and_the_writer(caplog) -> None:
    """Not only StorageUnavailable: any failed write keeps its rows, logs no row content, and
    the writer thread goes on (a dead thread with ``_thread`` still set would write nothing again)."""
    written: list[tuple] = []
    fail = [True]

    def write(rows: list[tuple]) -> None:
        if fail[0]:
            fail[0] = False
            raise ValueError("row ('secret-uuid', 'rule-a')")
        written.extend(rows)

    buffer = ShownCardBuffer(write, max_delay=0.05)
    buffer.add([("a",)])
    deadline = time.monotonic() + 10
    while not caplog.records and time.monotonic() < deadline:
        time.sleep(0.02)
    assert buffer.pending() == 1
    assert "ValueError" in caplog.text and "secret-uuid" not in caplog.text
    buffer.add([("b",)])  # the same thread (or a new one) writes both
    while len(written) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert written == [("a",), ("b",)]
    buffer.close()
