"""Storage backends: the same behaviour on a SQLite file and on a real PostgreSQL server.

Tests taking ``database_url`` run twice (see tests/support/postgres.py): feedback durable and
counted once, the replay cache atomic across separately opened stores (as two instances open
them), migrations versioned, forward only, and safe to run concurrently.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from cds_service.app import create_app
from cds_service.cli import main
from cds_service.storage import LATEST, SchemaError, StorageUnavailable, open_database, open_storage

from .conftest import load_example, make_settings

FB = {
    "card": "c-1",
    "outcome": "overridden",
    "outcomeTimestamp": "2026-05-04T10:00:00Z",
    "overrideReason": {"reason": {"code": "r1", "display": "Benefit outweighs risk"}},
}


def _entry(card: str, outcome: str = "accepted", ts: str = "2026-05-04T10:00:00Z") -> dict:
    e = {"card": card, "outcome": outcome, "outcomeTimestamp": ts}
    if outcome == "accepted":
        e["acceptedSuggestions"] = [{"id": "s"}]
    return e


def test_feedback_is_durable_and_counted_once_per_entry(database_url: str) -> None:
    a = open_storage(database_url)
    a.feedback.record_shown("order-sign", "h1", [("c-1", "rule-a", "warning"), ("c-2", "rule-b", "info")])
    a.feedback.record_shown("order-sign", "h1", [("c-1", "rule-a", "warning")])  # shown twice: once
    assert a.feedback.add_feedback("order-sign", [FB, _entry("c-2")]) == 2
    a.close()
    b = open_storage(database_url)  # another process / instance opening the same database
    assert b.feedback.add_feedback("order-sign", [FB]) == 1  # a retried POST: kept once
    assert b.feedback.add_feedback("order-sign", [_entry("c-2", ts="2026-05-04T11:00:00Z")]) == 1
    stats = {s["rule"]: s for s in b.feedback.rule_stats()}
    assert stats["rule-a"] == {
        "rule": "rule-a",
        "shown": 1,
        "accepted": 0,
        "overridden": 1,
        "reasons": {"Benefit outweighs risk": 1},
    }
    assert stats["rule-b"]["shown"] == 1 and stats["rule-b"]["accepted"] == 2
    b.close()


def test_replay_cache_is_shared_and_expires(database_url: str) -> None:
    now = [1000.0]
    one = open_storage(database_url, clock=lambda: now[0])
    two = open_storage(database_url, clock=lambda: now[0])
    assert one.jti_cache.add("iss", "a", 1100)
    assert not two.jti_cache.add("iss", "a", 1100), "replay on another instance"
    assert not one.jti_cache.add("iss", "a", 1100)
    assert two.jti_cache.add("other-iss", "a", 1100), "jti is per issuer"
    now[0] = 1101  # "a" expired: may be claimed again, once
    assert two.jti_cache.add("iss", "a", 1200)
    assert not one.jti_cache.add("iss", "a", 1200)
    one.close()
    two.close()


def test_replay_check_is_atomic_under_concurrency(database_url: str) -> None:
    """16 threads over 4 separately opened stores (as 4 instances) race with one jti, 20 rounds:
    exactly one wins every round."""
    stores = [open_storage(database_url) for _ in range(4)]
    barrier = threading.Barrier(16)
    wins: dict[int, list[bool]] = {r: [] for r in range(20)}
    lock = threading.Lock()

    def claim(i: int) -> None:
        for r in range(20):
            barrier.wait()
            ok = stores[i % 4].jti_cache.add("iss", f"race-{r}", time.time() + 60)
            with lock:
                wins[r].append(ok)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, results in wins.items():
        assert sorted(results) == [False] * 15 + [True], r
    for s in stores:
        s.close()


def test_migrations_are_versioned_and_idempotent(database_url: str) -> None:
    db = open_database(database_url, migrate=None)
    assert db.applied_versions() == set()
    assert [m.version for m in db.migrate()] == list(range(1, LATEST + 1))
    assert db.migrate() == []
    db.close()
    again = open_database(database_url)  # migrate at start: nothing left to do
    assert again.applied_versions() == set(range(1, LATEST + 1))
    again.close()


def test_concurrent_instances_migrate_once(database_url: str) -> None:
    errors: list[BaseException] = []
    applied: list[int] = []

    def start() -> None:
        try:
            db = open_database(database_url, migrate=None)
            applied.extend(m.version for m in db.migrate())
            db.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(applied) == list(range(1, LATEST + 1)), "each migration applied exactly once"


def test_opening_a_new_sqlite_file_waits_for_another_instances_write(tmp_path: Path) -> None:
    """The WAL switch on a file still in rollback mode upgrades a read lock to a write lock, which
    SQLite refuses at once (its deadlock rule ignores busy_timeout) while another connection holds
    RESERVED: six instances starting together on one new file failed that way now and then."""
    path = tmp_path / "new.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another instance mid-migration, its file still in rollback mode
    other.execute("CREATE TABLE t (x)")
    releaser = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    releaser.start()
    try:
        db = open_database(path, migrate=True)  # waits for the other writer, as busy_timeout promises
        assert db.applied_versions() == set(range(1, LATEST + 1))
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.close()
    finally:
        releaser.join()
        other.close()


def _set_version(database_url: str, version: int) -> None:
    if database_url.startswith("postgresql://"):
        with psycopg.connect(database_url) as conn:
            conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, 'future')", (version,))
    else:
        with sqlite3.connect(database_url) as db:
            db.execute("INSERT INTO schema_version VALUES (?, 'future', 'x')", (version,))


def test_a_newer_schema_refuses_to_start(database_url: str, tmp_path: Path) -> None:
    open_storage(database_url).close()
    _set_version(database_url, LATEST + 1)
    with pytest.raises(SchemaError, match="newer than this ketamine-cds"):
        open_storage(database_url)
    with pytest.raises(SystemExit, match="newer than this ketamine-cds"):
        create_app(make_settings(tmp_path, database=database_url))


def test_without_auto_migrate_a_behind_schema_refuses_to_start_until_migrate(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, database=database_url, auto_migrate=False)
    with pytest.raises(SystemExit, match="ketamine-cds migrate"):
        create_app(settings)
    status = CliRunner().invoke(main, ["migrate", "--status", "--database", database_url])
    assert status.exit_code == 0, status.output
    assert f"schema version 0, this release {LATEST}; {LATEST} migration(s) pending" in status.output
    out = CliRunner().invoke(main, ["migrate", "--database", database_url])
    assert out.exit_code == 0, out.output
    assert "applied 1: shown cards and feedback" in out.output
    assert f"schema version {LATEST} (was 0)" in out.output
    app = create_app(settings)
    app.extensions["ketamine_cds"].store.close()


def test_a_pre_versioning_sqlite_file_is_adopted(tmp_path: Path) -> None:
    """Feedback files written before schema_version existed: kept, duplicates folded, migrated."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE shown_cards (card_uuid TEXT PRIMARY KEY, service TEXT NOT NULL,
                rule_id TEXT NOT NULL, indicator TEXT NOT NULL, hook_instance TEXT NOT NULL,
                shown_at REAL NOT NULL);
            CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, service TEXT NOT NULL,
                card_uuid TEXT NOT NULL, outcome TEXT NOT NULL, outcome_timestamp TEXT NOT NULL,
                override_code TEXT, override_display TEXT, user_comment TEXT,
                accepted_suggestions TEXT, received_at REAL NOT NULL);
            INSERT INTO shown_cards VALUES ('u1', 'order-sign', 'rule-a', 'warning', 'h', 1);
            INSERT INTO feedback VALUES (NULL, 'order-sign', 'u1', 'overridden', 't', 'c', 'd', NULL, '', 1);
            INSERT INTO feedback VALUES (NULL, 'order-sign', 'u1', 'overridden', 't', 'c', 'd', NULL, '', 2);
            """
        )
    storage = open_storage(path)
    assert storage.database.applied_versions() == set(range(1, LATEST + 1))
    [stats] = storage.feedback.rule_stats()
    assert stats["shown"] == 1 and stats["overridden"] == 1 and stats["reasons"] == {"d": 1}
    storage.close()


def test_feedback_stats_and_service_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, database=postgres_url))
    with app.test_client() as c:
        resp = c.post("/cds-services/order-sign", json=load_example("v07-daily-lorazepam"))
        assert resp.status_code == 200
        card = resp.get_json()["cards"][0]
        fb = {"feedback": [_entry(card["uuid"], outcome="overridden")]}
        resp = c.post("/cds-services/order-sign/feedback", json=fb)
        assert resp.status_code == 200 and resp.get_json() == {"stored": 1}
    app.extensions["ketamine_cds"].store.close()
    out = CliRunner().invoke(main, ["feedback-stats", "--json", "--database", postgres_url])
    assert out.exit_code == 0, out.output
    stats = {s["rule"]: s for s in json.loads(out.output)}
    assert stats[card["source"]["topic"]["code"]]["overridden"] == 1


def test_unreachable_postgresql_fails_start_without_echoing_the_password(
    postgres_server, tmp_path: Path
) -> None:
    wrong = postgres_server.url().replace(postgres_server.password, "not-the-password-x9")
    with pytest.raises(SystemExit) as exc:
        create_app(make_settings(tmp_path, database=wrong))
    assert "postgresql (host=127.0.0.1" in str(exc.value) and "password authentication failed" in str(
        exc.value
    )
    assert "not-the-password-x9" not in str(exc.value)
    out = CliRunner().invoke(main, ["feedback-stats", "--database", wrong])
    assert out.exit_code != 0 and "not-the-password-x9" not in out.output


class _DownStore:
    def record_shown(self, *args: object) -> None:
        raise StorageUnavailable("postgresql (host=db): OperationalError: server closed the connection")

    def add_feedback(self, *args: object) -> int:
        raise StorageUnavailable("postgresql (host=db): OperationalError: server closed the connection")

    def rule_stats(self) -> list:
        return []

    def close(self) -> None: ...


def test_database_down_cards_still_served_and_feedback_is_503_not_acknowledged(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path), store=_DownStore())
    with app.test_client() as c:
        resp = c.post("/cds-services/order-sign", json=load_example("v07-daily-lorazepam"))
        assert resp.status_code == 200 and resp.get_json()["cards"]
        resp = c.post("/cds-services/order-sign/feedback", json={"feedback": [_entry("x")]})
        assert resp.status_code == 503
        assert "nothing was stored" in resp.get_json()["error"]


def test_postgresql_down_and_back(own_postgres_server, tmp_path: Path) -> None:
    """The database server crashes: feedback is 503 (not acknowledged, not a 500, no hang), cards
    are still served; it comes back: the next feedback is stored on a fresh pooled connection."""
    url = own_postgres_server.create_database()
    app = create_app(make_settings(tmp_path, database=url))
    call = load_example("v07-daily-lorazepam")
    with app.test_client() as c:
        assert (
            c.post("/cds-services/order-sign/feedback", json={"feedback": [_entry("up-1")]}).status_code
            == 200
        )
        own_postgres_server.stop_server()  # immediate: a crash
        t0 = time.monotonic()
        resp = c.post("/cds-services/order-sign/feedback", json={"feedback": [_entry("down-1")]})
        assert resp.status_code == 503 and time.monotonic() - t0 < 10
        resp = c.post("/cds-services/order-sign", json=call)
        assert resp.status_code == 200 and resp.get_json()["cards"]
        own_postgres_server.start_server()
        assert (
            c.post("/cds-services/order-sign/feedback", json={"feedback": [_entry("up-2")]}).status_code
            == 200
        )
    app.extensions["ketamine_cds"].store.close()
    with psycopg.connect(url) as conn:
        cards = {r[0] for r in conn.execute("SELECT card_uuid FROM feedback")}
    assert cards == {"up-1", "up-2"}


def test_a_dropped_connection_costs_no_request(postgres_url: str) -> None:
    """Connections killed under the pool (a failover, an idle timeout): the next call reconnects."""
    storage = open_storage(postgres_url)
    assert storage.jti_cache.add("iss", "before", time.time() + 60)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert storage.jti_cache.add("iss", "after", time.time() + 60)
    assert storage.feedback.add_feedback("order-sign", [_entry("after")]) == 1
    storage.close()


def test_connections_are_bounded_per_process(postgres_url: str) -> None:
    """Many concurrent requests (threads here; greenlets under the gevent worker, where a
    thread-local connection would mean one per request) share at most MAX_CONNECTIONS."""
    storage = open_storage(postgres_url)
    storage.database.release()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(10):
                storage.jti_cache.add("iss", f"bounded-{i}-{j}", time.time() + 60)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with psycopg.connect(postgres_url) as conn:
        n = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'ketamine-cds' AND datname = current_database()"
        ).fetchone()[0]
    assert 1 <= n <= storage.database.MAX_CONNECTIONS
    storage.close()
    # A closed connection's server process ends a moment after the client hangs up, so it may
    # still be listed right after close(); one that close() left open stays listed for good.
    deadline = time.monotonic() + 5
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        while True:
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'ketamine-cds' AND datname = current_database()"
            ).fetchone()[0]
            if left == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert left == 0, "close() closes them"
