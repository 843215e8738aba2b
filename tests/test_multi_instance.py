"""Two real instances (``ketamine-cds serve``, gunicorn, 2 workers each) behind one public URL, on one
real PostgreSQL database, called with real ES384 signatures: a token replayed on the other instance
is refused, feedback sent to either is counted once, and a SIGKILLed instance loses nothing it
acknowledged."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import requests
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from cds_service.cli import main

from .conftest import load_example
from .support.jwt_tools import public_jwk
from .support.postgres import PostgresServer
from .support.serve_process import ServeProcess

ISS = "https://ehr.test/cds-client"
KID = "ehr-key-1"
PUBLIC = "https://cds.example.test"  # what the load balancer's clients call: the JWT audience
ORDER_SIGN = "/cds-services/order-sign"
FEEDBACK = ORDER_SIGN + "/feedback"


@dataclass
class Cluster:
    key: ec.EllipticCurvePrivateKey
    database: str
    tmp: Path
    issuers: Path
    a: ServeProcess
    b: ServeProcess

    def instance_args(self) -> list[str]:
        """What every instance shares: database, trusted issuers, public base URL."""
        return [
            "--database",
            self.database,
            "--trusted-issuers",
            str(self.issuers),
            "--public-base-url",
            PUBLIC,
        ]

    def token(self, path: str) -> str:
        now = int(time.time())
        claims = {"iss": ISS, "aud": PUBLIC + path, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})


def post(instance: ServeProcess, path: str, body: Any, token: str) -> requests.Response:
    return requests.post(
        instance.url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("multi")
    key = ec.generate_private_key(ec.SECP384R1())
    issuers = tmp / "trusted-issuers.yaml"
    issuers.write_text(yaml.safe_dump([{"iss": ISS, "jwks": {"keys": [public_jwk(key, KID)]}}]))
    c = Cluster(key, postgres_server.create_database("multi"), tmp, issuers, None, None)  # type: ignore[arg-type]
    c.a = ServeProcess(tmp, *c.instance_args(), name="a")
    c.b = ServeProcess(tmp, *c.instance_args(), name="b")
    try:
        c.a.wait_ready()
        c.b.wait_ready()
        yield c
    finally:
        c.a.stop()
        c.b.stop()


def _stats(database: str) -> dict[str, dict[str, Any]]:
    out = CliRunner().invoke(main, ["feedback-stats", "--json", "--database", database])
    assert out.exit_code == 0, out.output
    return {s["rule"]: s for s in json.loads(out.output)}


def test_a_token_replayed_on_the_other_instance_is_refused(cluster: Cluster) -> None:
    body = load_example("v07-daily-lorazepam")
    tok = cluster.token(ORDER_SIGN)
    assert post(cluster.a, ORDER_SIGN, body, tok).status_code == 200
    replay = post(cluster.b, ORDER_SIGN, body, tok)
    assert replay.status_code == 401 and replay.json() == {"status": 401, "error": "authentication required"}
    assert post(cluster.a, ORDER_SIGN, body, tok).status_code == 401
    assert post(cluster.b, ORDER_SIGN, body, cluster.token(ORDER_SIGN)).status_code == 200


def test_one_token_sent_to_both_instances_at_once_is_accepted_once(cluster: Cluster) -> None:
    body = load_example("v07-daily-lorazepam")
    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            tok = cluster.token(ORDER_SIGN)
            targets = [cluster.a, cluster.b] * 4  # 8 concurrent copies over 4 workers in 2 instances
            codes = sorted(pool.map(lambda inst, t=tok: post(inst, ORDER_SIGN, body, t).status_code, targets))
            assert codes == [200] + [401] * 7


def test_feedback_sent_to_both_instances_is_counted_once(cluster: Cluster) -> None:
    body = load_example("v07-daily-lorazepam")
    # Shown cards are written in batches, within half a second (cds_service/storage/shown_buffer.py):
    # the earlier tests' are all written by now, this test's are waited for below.
    time.sleep(1.5)
    before = _stats(cluster.database)
    shown: list[dict[str, Any]] = []
    for inst in (cluster.a, cluster.b):
        resp = post(inst, ORDER_SIGN, {**body, "hookInstance": str(uuid.uuid4())}, cluster.token(ORDER_SIGN))
        assert resp.status_code == 200, resp.text
        shown.append(next(c for c in resp.json()["cards"] if c.get("overrideReasons")))
    card_a, card_b = shown
    assert card_a["uuid"] != card_b["uuid"]
    rule = card_a["source"]["topic"]["code"]
    assert card_b["source"]["topic"]["code"] == rule
    reason = card_a["overrideReasons"][0]

    def entry(card: dict[str, Any]) -> dict[str, Any]:
        return {
            "card": card["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": "2026-05-04T10:00:00Z",
            "overrideReason": {"reason": {"code": reason["code"], "system": reason["system"]}},
        }

    # Each card's feedback goes to the instance that did not show it, then is retried on the other
    # (a load balancer retrying a POST that timed out): four acknowledgements, two entries.
    for inst, card in ((cluster.b, card_a), (cluster.a, card_b), (cluster.a, card_a), (cluster.b, card_b)):
        resp = post(inst, FEEDBACK, {"feedback": [entry(card)]}, cluster.token(FEEDBACK))
        assert resp.status_code == 200 and resp.json() == {"stored": 1}, resp.text

    was = before.get(rule, {"shown": 0, "overridden": 0})
    deadline = time.monotonic() + 10
    while True:  # until both cards' shown rows are written (the join names their rule)
        after = _stats(cluster.database)
        if after.get(rule, was)["overridden"] - was["overridden"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert after[rule]["shown"] - was["shown"] == 2
    assert after[rule]["overridden"] - was["overridden"] == 2


def test_sigkill_of_an_instance_loses_no_acknowledged_feedback(cluster: Cluster) -> None:
    """Four clients post feedback to a third instance as fast as they can; it is SIGKILLed (master
    and workers) mid-stream. Every entry it answered 200 for is in the database; the other instances
    keep serving."""
    victim = ServeProcess(cluster.tmp, *cluster.instance_args(), name="victim").wait_ready()
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            card = f"kill-{uuid.uuid4()}"
            fb = {
                "feedback": [
                    {
                        "card": card,
                        "outcome": "accepted",
                        "outcomeTimestamp": "2026-05-04T10:00:00Z",
                        "acceptedSuggestions": [{"id": "s"}],
                    }
                ]
            }
            try:
                r = session.post(
                    victim.url + FEEDBACK,
                    json=fb,
                    headers={"Authorization": f"Bearer {cluster.token(FEEDBACK)}"},
                    timeout=10,
                )
            except requests.RequestException:
                continue  # the instance is gone: nothing was acknowledged
            if r.status_code == 200:
                with lock:
                    acknowledged.append(card)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.kill()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    victim.stop()
    assert len(acknowledged) >= 150, f"only {len(acknowledged)} acknowledged before the kill:\n{victim.log()}"

    with psycopg.connect(cluster.database) as conn:
        stored = {r[0] for r in conn.execute("SELECT card_uuid FROM feedback WHERE card_uuid LIKE 'kill-%'")}
    lost = set(acknowledged) - stored
    print(f"SIGKILL: {len(acknowledged)} acknowledged, {len(stored)} stored, {len(lost)} lost")
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged entries lost"

    body = load_example("v07-daily-lorazepam")
    for inst in (cluster.a, cluster.b):
        assert post(inst, ORDER_SIGN, body, cluster.token(ORDER_SIGN)).status_code == 200
