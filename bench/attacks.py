"""Re-runs the attacks of issue 10 against the real ``ketamine-cds serve`` (gunicorn) and prints numbers.

    python bench/attacks.py                 # all sections against this checkout
    python bench/attacks.py --code DIR      # the same attacks against another checkout (before/after)
    python bench/attacks.py --only fetch    # jwt | slow | faults | memory | fetch

* ``jwt``     forged and misdirected tokens (incl. the Host/X-Forwarded audience bypass) → 401s
* ``slow``    N clients trickling headers or a body; latency of /healthz and a valid call meanwhile
* ``faults``  FHIR server fault kinds (FaultFhirServer) → status and seconds to the answer
* ``memory``  33 calls whose FHIR server sends 19 MB pages; worker RSS before and after
* ``fetch``   fetch mode (no prefetch) of large records from the real FHIR server (Medplum engine)

Not a test: it prints. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import records  # noqa: E402
from tests.support.fault_fhir import FaultFhirServer, refused_url  # noqa: E402
from tests.support.jwt_tools import forged, public_jwk  # noqa: E402

ISS = "https://ehr.bench/cds-client"
KID = "k1"


def say(text: str = "") -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    def __init__(self, code: Path, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        environ = {
            **os.environ,
            "KETAMINE_CDS_DATABASE": str(tmp / f"db-{self.port}.sqlite3"),
            "KETAMINE_CDS_RULES_DIR": str(code / "rules"),
            "PYTHONPATH": str(code),
            **(env or {}),
        }
        cmd = [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(self.port), *args]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=code, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve exited: {self.log.read_text()[-1500:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise SystemExit("serve not ready")

    def workers(self) -> list[int]:
        out = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            out += [int(p) for p in (task / "children").read_text().split()]
        return out

    def rss_mib(self) -> float:
        total = 0
        for pid in self.workers():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def example(hook: str) -> dict[str, Any]:
    for path in sorted((ROOT / "fhir_examples").glob("*.json")):
        body = json.loads(path.read_text())
        if body.get("hook") == hook:
            return body
    raise LookupError(hook)


# -- jwt ------------------------------------------------------------------------------------------------
def section_jwt(code: Path, tmp: Path, new: bool) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    other = ec.generate_private_key(ec.SECP384R1())
    issuers = tmp / "issuers.yaml"
    issuers.write_text(yaml.safe_dump([{"iss": ISS, "jwks": {"keys": [public_jwk(key, KID)]}}]))
    srv = Serve(code, tmp, "--trusted-issuers", str(issuers))
    try:
        path = "/cds-services/patient-view"
        aud = srv.url + path
        now = int(time.time())

        def claims(**kw: Any) -> dict[str, Any]:
            c = {"iss": ISS, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
            c.update(kw)
            return {k: v for k, v in c.items() if v is not None}

        def sign(k: Any = key, kid: str = KID, **kw: Any) -> str:
            return jwt.encode(claims(**kw), k, algorithm="ES384", headers={"kid": kid, "typ": "JWT"})

        spoof = {"Host": "other-cds.example.org", "X-Forwarded-Proto": "https"}
        replayed = sign()
        cases: list[tuple[str, str, dict[str, str]]] = [
            (
                "aud of another service + Host/X-Forwarded",
                sign(aud="https://other-cds.example.org" + path),
                spoof,
            ),
            ("aud of another service", sign(aud="https://other-cds.example.org" + path), {}),
            ("wrong key", sign(k=other), {}),
            ("unknown kid", sign(kid="nope"), {}),
            ("untrusted iss", sign(iss="https://evil.example"), {}),
            ("expired", sign(exp=now - 3600, iat=now - 4000), {}),
            ("iat in the future", sign(iat=now + 3600), {}),
            ("no jti", sign(jti=None), {}),
            ("lifetime > replay window", sign(exp=now + 7 * 3600), {}),
            ("alg none", forged({"alg": "none", "kid": KID, "typ": "JWT"}, claims(), None), {}),
            ("HS256", forged({"alg": "HS256", "kid": KID, "typ": "JWT"}, claims(), b"secret"), {}),
            ("garbage", "a.b.c", {}),
            ("replay (second use)", replayed, {}),
        ]
        body = example("patient-view")
        first = requests.post(
            srv.url + path, json=body, headers={"Authorization": f"Bearer {replayed}"}, timeout=10
        )
        refused = 0
        say(
            f"\n== JWT attacks ({'after' if new else 'before'}): "
            "real gunicorn, JWT mode, no --public-base-url =="
        )
        for name, tok, extra in cases:
            r = requests.post(
                srv.url + path, json=body, headers={"Authorization": f"Bearer {tok}", **extra}, timeout=10
            )
            refused += r.status_code == 401
            www = "WWW-Authenticate" in r.headers
            say(
                f"  {r.status_code}  {name}{'' if r.status_code == 401 else '   <-- ACCEPTED'}"
                f"{'' if www or r.status_code != 401 else '   (no WWW-Authenticate)'}"
            )
        ok = requests.post(
            srv.url + path, json=body, headers={"Authorization": f"Bearer {sign()}"}, timeout=10
        )
        say(
            f"  {refused}/{len(cases)} attacks refused; valid token → {ok.status_code}; "
            f"first use of the replayed one → {first.status_code}"
        )
    finally:
        srv.stop()


# -- slow clients -----------------------------------------------------------------------------------------
def slow_clients(port: int, count: int, stop: threading.Event) -> list[socket.socket]:
    socks = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        if i % 2:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        else:
            s.sendall(
                b"POST /cds-services/patient-view HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{"
            )
        socks.append(s)

    def drip() -> None:
        while not stop.wait(1.0):
            for i, s in enumerate(socks):
                with contextlib.suppress(OSError):
                    s.sendall(b"X-Slow: 1\r\n" if i % 2 else b" ")

    threading.Thread(target=drip, daemon=True).start()
    return socks


def section_slow(code: Path, tmp: Path, new: bool) -> None:
    body = example("patient-view")
    say(
        f"\n== slow clients ({'after' if new else 'before'}): N connections trickling headers/body; "
        "then 5 × (/healthz + a patient-view call), 5 s timeout =="
    )
    configs = (
        [("gevent", ["--worker-class", "gevent"]), ("gthread 2×4", ["--worker-class", "gthread"])]
        if new
        else [("gthread 2×4", [])]
    )
    for label, extra in configs:
        for count in (8, 64):
            srv = Serve(code, tmp, "--dev", *extra)
            stop = threading.Event()
            socks = slow_clients(srv.port, count, stop)
            time.sleep(2)
            worst, failures = 0.0, 0
            for _ in range(5):
                started = time.monotonic()
                try:
                    requests.get(srv.url + "/healthz", timeout=5).raise_for_status()
                    requests.post(
                        srv.url + "/cds-services/patient-view", json=body, timeout=5
                    ).raise_for_status()
                except requests.RequestException:
                    failures += 1
                worst = max(worst, time.monotonic() - started)
                time.sleep(0.3)
            stop.set()
            for s in socks:
                s.close()
            srv.stop()
            say(
                f"  {label:12} {count:3} slow clients: {5 - failures}/5 rounds answered, "
                f"worst round {worst:.3f} s"
            )


# -- FHIR faults -------------------------------------------------------------------------------------------
FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("401", {"mode": "status", "status": 401}),
    ("404", {"mode": "status", "status": 404}),
    ("500", {"mode": "status", "status": 500}),
    ("non-JSON", {"mode": "non_json"}),
    ("huge 32 MB", {"mode": "huge"}),
    ("next cycle", {"mode": "next_cycle"}),
    ("next endless", {"mode": "next_endless"}),
    ("drop", {"mode": "drop"}),
    ("slow 10 s", {"mode": "slow", "delay": 10}),
    ("drip 1 B/s", {"mode": "drip", "interval": 1.0}),
    ("drip 1 B/0.5 s", {"mode": "drip", "interval": 0.5}),
    ("drip headers", {"mode": "drip_headers", "interval": 0.5}),
]


def section_faults(code: Path, tmp: Path, new: bool) -> None:
    body = example("order-sign")
    for key in list(body["prefetch"]):
        if key != "patient":
            del body["prefetch"][key]
    srv = Serve(code, tmp, "--dev")
    say(
        f"\n== FHIR fault kinds ({'after' if new else 'before'}): "
        "every key but patient left to fetch, deadline 3 s =="
    )
    worst = 0.0
    statuses: dict[int, int] = {}
    try:
        with FaultFhirServer() as fhir:
            for name, route in [*FAULTS, ("refused port", {})]:
                fhir.reset()
                if route:
                    fhir.route("/*", **route)
                body["fhirServer"] = fhir.base_url if route else refused_url()
                started = time.monotonic()
                try:
                    r = requests.post(srv.url + "/cds-services/order-sign", json=body, timeout=30)
                    status = r.status_code
                except requests.RequestException:
                    status = 0
                elapsed = time.monotonic() - started
                worst = max(worst, elapsed)
                statuses[status] = statuses.get(status, 0) + 1
                say(f"  {status}  {elapsed:5.2f} s  {name}")
            threads = _fetch_threads_hint(srv)
    finally:
        srv.stop()
    say(f"  statuses {statuses}; slowest answer {worst:.2f} s (deadline 3 s){threads}")


def _fetch_threads_hint(srv: Serve) -> str:
    counts = []
    for pid in srv.workers():
        with contextlib.suppress(OSError):
            counts.append(len(list(Path(f"/proc/{pid}/task").iterdir())))
    return f"; OS threads per worker afterwards: {counts}"


# -- memory -------------------------------------------------------------------------------------------------
def section_memory(code: Path, tmp: Path, new: bool) -> None:
    body = example("order-sign")
    for key in list(body["prefetch"]):
        if key != "patient":
            del body["prefetch"][key]
    srv = Serve(code, tmp, "--dev", "--workers", "1")
    try:
        with FaultFhirServer() as fhir:
            fhir.route("/*", mode="next_endless")  # a new page each time...
            fhir.route("/*", mode="huge", size=19 * 1024 * 1024)  # ...of 19 MB
            body["fhirServer"] = fhir.base_url
            requests.get(srv.url + "/healthz", timeout=5)
            before = srv.rss_mib()
            started = time.monotonic()
            statuses = [
                requests.post(srv.url + "/cds-services/order-sign", json=body, timeout=60).status_code
                for _ in range(33)
            ]
            took = time.monotonic() - started
            time.sleep(1)
            after = srv.rss_mib()
            sent = len(fhir.requests)
    finally:
        srv.stop()
    say(f"\n== memory ({'after' if new else 'before'}): 33 calls, FHIR pages of 19 MB, 1 worker ==")
    say(
        f"  statuses {sorted(set(statuses))}, {sent} FHIR requests, {took:.1f} s; "
        f"worker RSS {before:.0f} → {after:.0f} MiB"
    )


# -- fetch mode --------------------------------------------------------------------------------------------
def section_fetch(code: Path, tmp: Path, new: bool, sizes: list[int]) -> None:
    from tests.support.fhir_server import start_fhir_server

    say(
        f"\n== fetch mode ({'after' if new else 'before'}): "
        "no prefetch, real FHIR server, deadline 3 s, 5 calls each =="
    )
    srv = Serve(code, tmp, "--dev")
    try:
        with start_fhir_server() as fhir:
            for size in sizes:
                request = records.build_request(size, "order-sign", seed=0)
                pid = request["context"]["patientId"]
                resources: dict[tuple[str, str], dict[str, Any]] = {}
                for value in request["prefetch"].values():
                    items = (
                        [e["resource"] for e in value.get("entry", [])]
                        if value and value.get("resourceType") == "Bundle"
                        else [value]
                        if value
                        else []
                    )
                    for res in items:
                        resources[(res["resourceType"], res["id"])] = res
                fhir.put_resources(list(resources.values()))
                body = {k: v for k, v in request.items() if k != "prefetch"}
                body["fhirServer"] = fhir.base_url
                times, statuses, partial = [], [], []
                for _ in range(5):
                    body["hookInstance"] = str(uuid.uuid4())
                    started = time.monotonic()
                    r = requests.post(srv.url + "/cds-services/order-sign", json=body, timeout=30)
                    times.append(time.monotonic() - started)
                    statuses.append(r.status_code)
                    gap = _not_retrieved(r)
                    if gap:
                        partial.append(gap)
                say(
                    f"  {size:5} resources ({len(resources)} stored for {pid}): "
                    f"statuses {sorted(set(statuses))}, "
                    f"median {statistics.median(times):.2f} s, max {max(times):.2f} s"
                    + (f"; {len(partial)} partial ({'; '.join(sorted(set(partial)))})" if partial else "")
                )
    finally:
        srv.stop()


def _not_retrieved(resp: requests.Response) -> str:
    """The data-gap card's "Not retrieved from the EHR: …" list of a partial answer, else ""."""
    if resp.status_code != 200:
        return ""
    for card in resp.json().get("cards", []):
        summary = card.get("summary", "")
        if summary.startswith("Not retrieved from the EHR: "):
            return summary.removeprefix("Not retrieved from the EHR: ").split(";")[0]
    return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose service is attacked")
    p.add_argument("--only", action="append", choices=["jwt", "slow", "faults", "memory", "fetch"])
    p.add_argument("--sizes", default="2300,5000", help="fetch-mode record sizes")
    args = p.parse_args(argv)
    code = args.code.resolve()
    new = (code / "cds_service" / "serving.py").exists()
    only = set(args.only or ["jwt", "slow", "faults", "memory", "fetch"])
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "jwt" in only:
            section_jwt(code, tmp, new)
        if "slow" in only:
            section_slow(code, tmp, new)
        if "faults" in only:
            section_faults(code, tmp, new)
        if "memory" in only:
            section_memory(code, tmp, new)
        if "fetch" in only:
            section_fetch(code, tmp, new, [int(s) for s in args.sizes.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
