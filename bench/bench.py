"""Latency and throughput benchmark of the CDS service (prints numbers; not a test).

Parts (``--parts``, default ``inproc,http,linearity``):

* ``inproc``    each hook × each record size through the Flask app in-process (``app.test_client()``,
                auth off, evaluation-time extension on, a temporary SQLite database), and
                ``pipeline.run`` alone on the parsed request (so HTTP/JSON/validation overhead shows).
                Two modes per cell: ``new`` — a new patient every call (every id and reference
                differs, so nothing cached from an earlier call applies: the first call of a patient's
                session) and ``repeat`` — the identical request again (what an EHR sends for the same
                patient on the next hook of a session; caches keyed by content are warm).
* ``http``      gunicorn with 2 workers (``ketamine-cds serve --dev``) driven by a keep-alive load
                generator (stdlib ``http.client``, several processes × threads): closed-loop
                throughput and latency for the typical record (same request / new patient per call /
                patient sessions of patient-view → order-select → order-sign), then unloaded
                latency one request at a time for the typical and the large record.
* ``linearity`` ms per resource across sizes (from the in-process order-sign numbers).
* ``floor``     the echo floor (``bench/floor.py``): a plain Flask echo endpoint (parse JSON, no cards)
                served by the same ``serve`` command, loaded side by side with the service in one
                run, new patient every order-sign call; prints the throughput ratio.
* ``profile``   cProfile of the in-process order-sign call for the typical and the large record (not
                in the default run: ``--parts profile``).
* ``worker-profile``  the service in real gunicorn workers under the floor's load, sampled on process
                CPU (``bench/worker_profile.py``; not in the default run).

Targets are printed with PASS/MISS. Wall times are what a caller waits; CPU times (this thread's)
are what a call costs whatever else the machine is doing — on a shared machine compare those.
``--json`` prints machine-readable results on stdout (the tables then go to stderr). Needs only the
project's own dependencies. Run from the repository root:

    .venv/bin/python bench/bench.py                       # full default run, about 3 minutes
    .venv/bin/python bench/bench.py --parts inproc --sizes 200,5000 --modes new
    .venv/bin/python bench/bench.py --parts http --duration 20 --connections 16
    .venv/bin/python bench/bench.py --parts profile --profile-iterations 50
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402
import records  # noqa: E402
from common import DEFAULT_SIZES, HOOKS, LARGE, MODE_TEXT, MODES, TYPICAL, say, verdict  # noqa: E402
from inproc import LINEAR_MIN_R2, LINEAR_SLOPE_TOLERANCE, bench_inproc, bench_profile, linearity  # noqa: E402
from loadgen import run_load, sequential, warm_server  # noqa: E402
from server import Server, server_cpu  # noqa: E402

TARGETS = {
    "inproc_order_sign_p50_ms": 5.0,
    "inproc_order_sign_p99_ms": 15.0,
    "http_throughput_rps": 300.0,
    "large_record_ms": 100.0,
    "floor_ratio": 0.5,
}


def bench_http(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    say(
        f"\n== HTTP: gunicorn, {args.workers} workers × {args.threads or 4} threads (serve --dev); "
        f"{os.cpu_count()} CPUs shared by server and load generator =="
    )
    server = Server(tmp, workers=args.workers, threads=args.threads)
    out: dict[str, Any] = {"workers": args.workers, "cpus": os.cpu_count()}
    try:
        server.wait_ready()
        out["startup_s"] = server.ready_s
        warm_server(server, [TYPICAL, LARGE], seconds=args.warm_seconds)
        sign = [("/cds-services/order-sign", records.request_bytes(TYPICAL, "order-sign"))]
        session = [(f"/cds-services/{h}", records.request_bytes(TYPICAL, h)) for h in HOOKS]
        cases = [("order-sign, new patient", sign, "call"), ("order-sign, same request", sign, None)]
        if not args.quick:
            cases.append(("sessions view→select→sign", session, "session"))
        say(
            f"{'closed loop, ' + str(TYPICAL) + ' resources':30} {'conns':>5} {'req/s':>7} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'errors':>6} {'server CPU':>10} {'client CPU':>10}"
        )
        for name, plan, vary in cases:
            cpu0 = server_cpu(server)
            r = run_load(server.port, plan, args.duration, args.connections, args.client_processes, vary=vary)
            r["server_cpu_s"] = round(server_cpu(server) - cpu0, 2)
            r["server_cpu_ms_per_request"] = round(1000 * r["server_cpu_s"] / max(1, r["ok"]), 2)
            # what the CPUs could serve if nothing else ran (the load generator included)
            r["cpu_bound_ceiling_rps"] = round(
                (os.cpu_count() or 1) * 1000 / max(r["server_cpu_ms_per_request"], 1e-9), 1
            )
            out[name] = r
            say(
                f"{name:30} {r['connections']:5} {r['throughput_rps']:7.1f} {r['latency_ms']['p50']:7.2f} "
                f"{r['latency_ms']['p99']:7.2f} {r['error_count']:6} "
                f"{r['server_cpu_s'] / r['duration_s']:9.2f}c "
                f"{r['client_cpu_s'] / r['duration_s']:9.2f}c   "
                f"({r['server_cpu_ms_per_request']:.1f} ms server CPU/request → ceiling "
                f"{r['cpu_bound_ceiling_rps']:.0f} req/s on {os.cpu_count()} idle CPUs)"
            )
        say(f"{'one request at a time':30} {'n':>5} {'':>7} {'p50 ms':>7} {'p99 ms':>7} {'mean':>6}")
        for size, n in ((TYPICAL, args.seq_requests), (LARGE, args.large_requests)):
            body = records.request_bytes(size, "order-sign")
            for new in (True, False):
                s = sequential(server.port, body, n, new)
                key = f"sequential order-sign {size} {'new' if new else 'repeat'}"
                out[key] = s
                say(
                    f"{f'order-sign {size} res, ' + ('new patient' if new else 'same request'):30} "
                    f"{s['n']:5} "
                    f"{'':>7} {s['p50']:7.2f} {s['p99']:7.2f} {s['mean']:6.1f}   "
                    f"({len(body) / 1024:.0f} KiB body)"
                )
        say(
            "  req/s = HTTP 200 answers per second; latency = send → full response at the client; "
            "CPU in cores (c) averaged over the run"
        )
        say(
            "  ceiling = CPUs × 1000 / server CPU ms per request: the closed-loop rate if the server had "
            "every CPU to itself (on a shared machine req/s falls short of it)"
        )
    finally:
        server.stop()
    return out


# -- targets and main -------------------------------------------------------------------------------
def report_targets(results: dict[str, Any]) -> dict[str, Any]:
    say("\n== targets ==")
    checks: list[dict[str, Any]] = []
    inproc = results.get("inproc", {})
    for mode in MODES:
        sign = inproc.get("order-sign", {}).get(mode, {}).get(str(TYPICAL))
        if sign:
            for q in ("p50", "p99"):
                wall, cpu = sign["app_ms"][q], sign["app_cpu_ms"][q]
                target = TARGETS[f"inproc_order_sign_{q}_ms"]
                checks.append(
                    {
                        "target": f"in-process order-sign {q}, {TYPICAL} resources, {MODE_TEXT[mode]}",
                        "limit": f"≤ {target:g} ms",
                        "wall_ms": wall,
                        "cpu_ms": cpu,
                        "pass": wall <= target,
                    }
                )
    for mode in MODES:
        large = inproc.get("order-sign", {}).get(mode, {}).get(str(LARGE))
        if large:
            wall, cpu = large["app_ms"]["p50"], large["app_cpu_ms"]["p50"]
            checks.append(
                {
                    "target": f"{LARGE}-resource record, in-process order-sign p50, {MODE_TEXT[mode]}",
                    "limit": f"≤ {TARGETS['large_record_ms']:g} ms",
                    "wall_ms": wall,
                    "cpu_ms": cpu,
                    "pass": wall <= TARGETS["large_record_ms"],
                }
            )
    http_r = results.get("http", {})
    for name in ("order-sign, new patient", "order-sign, same request", "sessions view→select→sign"):
        if name in http_r:
            rps = http_r[name]["throughput_rps"]
            checks.append(
                {
                    "target": f"HTTP throughput, {name}, {TYPICAL} resources",
                    "limit": "≥ 300 req/s",
                    "rps": rps,
                    "pass": rps >= TARGETS["http_throughput_rps"],
                }
            )
    for mode in ("new", "repeat"):
        seq = http_r.get(f"sequential order-sign {LARGE} {mode}")
        if seq:
            checks.append(
                {
                    "target": f"{LARGE}-resource record over HTTP, unloaded p50, {MODE_TEXT[mode]}",
                    "limit": f"≤ {TARGETS['large_record_ms']:g} ms",
                    "wall_ms": seq["p50"],
                    "pass": seq["p50"] <= TARGETS["large_record_ms"],
                }
            )
    fl = results.get("floor")
    if fl:
        checks.append(
            {
                "target": f"order-sign, new patient, {TYPICAL} resources vs the echo floor",
                "limit": f"≥ {TARGETS['floor_ratio']:g}× its req/s",
                "ratio": fl["ratio"],
                "pass": fl["ratio"] >= TARGETS["floor_ratio"],
            }
        )
    lin = results.get("linearity", {})
    for mode in MODES:
        m = lin.get(mode)
        if m and "linear" in m:
            checks.append(
                {
                    "target": f"cost linear in record size ({MODE_TEXT[mode]})",
                    "limit": f"R² ≥ {LINEAR_MIN_R2}, marginals ±{LINEAR_SLOPE_TOLERANCE:.0%}",
                    "slope_ms_per_1000": round(m["slope_ms_per_resource"] * 1000, 2),
                    "r2": round(m["r2"], 4),
                    "pass": m["linear"],
                }
            )
    for c in checks:
        if "cpu_ms" in c:
            got = f"{c['wall_ms']:.2f} ms wall ({c['cpu_ms']:.2f} ms CPU)"
        elif "wall_ms" in c:
            got = f"{c['wall_ms']:.2f} ms"
        elif "ratio" in c:
            got = f"{c['ratio']:.2f}×"
        elif "rps" in c:
            got = f"{c['rps']:.1f} req/s"
        else:
            got = f"{c['slope_ms_per_1000']:.2f} ms per 1,000 resources, R² {c['r2']:.4f}"
        say(f"  {verdict(c['pass'])}  {c['target'] + ' ' + c['limit']:84} {got}")
    return {"checks": checks}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--parts",
        default="inproc,http,linearity,floor",
        help="comma list of inproc, http, linearity, floor, profile, worker-profile "
        "(default: inproc,http,linearity,floor)",
    )
    p.add_argument(
        "--sizes",
        default=",".join(str(s) for s in DEFAULT_SIZES),
        help="record sizes in FHIR resources (default: 200,1000,2000,5000)",
    )
    p.add_argument("--modes", default="new,repeat", help="in-process modes: new, repeat (default both)")
    p.add_argument("--iterations", type=int, default=300, help="max timed calls per cell (default 300)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per hook×size first (default 3)")
    p.add_argument(
        "--cell-budget",
        type=float,
        default=2.5,
        help="seconds per cell for the app timing; pipeline-alone gets half (default 2.5)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per HTTP load run (default 10)")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections (default 16)")
    p.add_argument("--client-processes", type=int, default=4, help="load generator processes (default 4)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    p.add_argument(
        "--threads", type=int, default=None, help="gunicorn threads per worker (default: serve's 4)"
    )
    p.add_argument("--warm-seconds", type=float, default=3.0, help="server warm-up load (default 3 s)")
    p.add_argument("--seq-requests", type=int, default=40, help="sequential typical requests per mode (40)")
    p.add_argument("--large-requests", type=int, default=10, help="sequential large requests per mode (10)")
    p.add_argument("--quick", action="store_true", help="HTTP: skip the session-mix run")
    p.add_argument("--floor-rounds", type=int, default=2, help="floor: echo/service load pairs (default 2)")
    p.add_argument(
        "--floor-code",
        type=Path,
        help="floor: also load the service of another checkout (before/after) in the same rounds",
    )
    p.add_argument("--profile-iterations", type=int, default=100, help="profiled typical calls (large: 1/10)")
    p.add_argument("--profile-mode", choices=MODES, default="new")
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--profile-dump", help="also write <prefix>.<size>.pstats files")
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="experiment: gc.freeze() after building the in-process app (moves the loaded rule set and "
        "fhir.resources models out of the collector's reach)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable results on stdout")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(args.modes) - set(MODES):
        p.error(f"unknown modes: {sorted(set(args.modes) - set(MODES))}")
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    unknown = parts - {"inproc", "http", "linearity", "floor", "profile", "worker-profile"}
    if unknown:
        p.error(f"unknown parts: {sorted(unknown)}")
    if args.json:
        common.OUT = sys.stderr
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_start": os.getloadavg(),
        },
        "sizes": args.sizes,
        "modes": args.modes,
        "gc_freeze_experiment": args.gc_freeze,
    }
    say(
        f"ketamine-cds benchmark · {os.cpu_count()} CPUs · Python {sys.version.split()[0]} · "
        f"sizes {args.sizes} "
        f"· parts {sorted(parts)} · load average {os.getloadavg()[0]:.2f}"
    )
    t0 = time.perf_counter()
    needed = set(args.sizes) | (
        {TYPICAL, LARGE} if parts & {"http", "profile", "floor", "worker-profile"} else set()
    )
    for size in sorted(needed):
        for hook in HOOKS:
            records.request_bytes(size, hook)
    say(
        f"records built in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(
            f"{s} res = {len(records.request_bytes(s, 'order-sign')) / 1024:.0f} KiB" for s in sorted(needed)
        )
    )
    with tempfile.TemporaryDirectory(prefix="ketamine-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if parts & {"inproc", "linearity"}:
            results["inproc"] = bench_inproc(args, tmp)
        if "linearity" in parts:
            results["linearity"] = linearity(results["inproc"], args.sizes, args.modes)
        if "http" in parts:
            results["http"] = bench_http(args, tmp)
        if "floor" in parts:
            import floor

            results["floor"] = floor.bench_floor(args, tmp)
        if "profile" in parts:
            results["profile"] = bench_profile(args, tmp)
        if "worker-profile" in parts:
            import worker_profile

            results["worker_profile"] = worker_profile.bench_worker_profile(args, tmp)
    results["targets"] = report_targets(results)
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    results["machine"]["loadavg_end"] = os.getloadavg()
    say(
        f"\nload average (1 min) at start {results['machine']['loadavg_start'][0]:.2f}, at end "
        f"{results['machine']['loadavg_end'][0]:.2f} ({os.cpu_count()} CPUs) · "
        f"total wall time {results['wall_s']} s"
    )
    if args.json:
        json.dump(results, sys.stdout, indent=2, default=str)
        print()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
