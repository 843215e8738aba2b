"""gunicorn worker classes side by side: the shipped ``gevent`` and ``gthread`` (``--threads``), both
started by the real ``serve`` command (prints numbers; not a test).

For each class, two loads:

* **prefetch** (CPU-bound, the floor's load): order-sign, typical record, a new patient each call,
  closed loop; the echo (``bench/echo_serve.py``) under the same class and settings alongside, so
  the ratio is the floor's;
* **fetch** (calls wait on the FHIR server): the same request with ``conditions``, ``procedures``
  and ``allergies`` left out of prefetch, fetched from a FHIR server that answers each search after
  ``--fhir-delay`` seconds (an EHR's FHIR server is rarely faster than ~0.1 s), more connections
  than a gthread worker has threads.

req/s, latency and server CPU ms per request for each. Wall-time figures move with what else runs
on the machine: compare classes within one run, and repeat. Run from the repository root:

    .venv/bin/python bench/worker_classes.py --duration 10 --connections 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import records
from common import HERE, ROOT, TYPICAL, say
from loadgen import run_load
from server import Server, server_cpu

FETCHED = ("conditions", "procedures", "allergies")


def _measure(server: Server, body: bytes, args: argparse.Namespace, connections: int) -> dict[str, Any]:
    plan = [("/cds-services/order-sign", body)]
    cpu0 = server_cpu(server)
    r = run_load(server.port, plan, args.duration, connections, args.client_processes, vary="call")
    r["cpu_ms"] = round(1000 * (server_cpu(server) - cpu0) / max(1, r["ok"]), 2)
    return r


def _row(label: str, r: dict[str, Any]) -> None:
    say(
        f"  {label:22} {r['throughput_rps']:7.1f} req/s  p50 {r['latency_ms']['p50']:7.1f} ms  "
        f"p99 {r['latency_ms']['p99']:7.1f} ms  errors {r['error_count']:3}  CPU {r['cpu_ms']:6.2f} ms/req"
    )


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from tests.support.fault_fhir import FaultFhirServer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", default="gevent,gthread")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4, help="gthread threads per worker (serve's default 4)")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=16, help="prefetch load (the floor's default)")
    p.add_argument("--fetch-connections", type=int, default=32)
    p.add_argument("--client-processes", type=int, default=4)
    p.add_argument("--fhir-delay", type=float, default=0.15, help="seconds the FHIR server takes per search")
    args = p.parse_args()

    prefetch_body = records.request_bytes(TYPICAL, "order-sign")
    request = orjson.loads(prefetch_body)
    tmp = Path(tempfile.mkdtemp(prefix="worker-classes-"))
    with FaultFhirServer() as fhir:
        fhir.route("/*", mode="slow", delay=args.fhir_delay)  # an empty searchset, after the delay
        for key in FETCHED:
            del request["prefetch"][key]
        request["fhirServer"] = fhir.base_url
        fetch_body = orjson.dumps(request)
        for worker_class in args.classes.split(","):
            env = {"KETAMINE_CDS_WORKER_CLASS": worker_class}
            echo = Server(
                tmp,
                args.workers,
                args.threads,
                env=env,
                launcher=[sys.executable, str(HERE / "echo_serve.py")],
            )
            service = Server(tmp, args.workers, args.threads, env=env)
            try:
                for s in (echo, service):
                    s.wait_ready()
                    run_load(s.port, [("/cds-services/order-sign", prefetch_body)], 3, 4, 2, vary="call")
                say(
                    f"\n== {worker_class} ({args.workers} workers"
                    + (f", {args.threads} threads each" if worker_class == "gthread" else "")
                    + ") =="
                )
                e = _measure(echo, prefetch_body, args, args.connections)
                s = _measure(service, prefetch_body, args, args.connections)
                _row(f"echo, {args.connections} conn", e)
                _row(f"prefetch, {args.connections} conn", s)
                say(
                    f"  {'':22} ratio {s['throughput_rps'] / max(e['throughput_rps'], 1e-9):.2f}× by req/s, "
                    f"{e['cpu_ms'] / max(s['cpu_ms'], 1e-9):.2f}× by CPU per request"
                )
                f = _measure(service, fetch_body, args, args.fetch_connections)
                _row(f"fetch, {args.fetch_connections} conn", f)
            finally:
                echo.stop()
                service.stop()


if __name__ == "__main__":
    main()
