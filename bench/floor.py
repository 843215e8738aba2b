"""The echo floor: the service's throughput as a fraction of a plain Flask echo's (``--parts floor``).

Both are started with the same ``serve`` command (``bench/echo_serve.py`` swaps the app for an echo
that parses the JSON body and returns no cards), so gunicorn's settings are identical. Both run at
once; the same load (closed loop, a new patient on every order-sign call, the typical record) is
sent to the echo and then to the service, ``--floor-rounds`` times, alternating, so that whatever
else the machine does affects both alike. The ratio of the mean req/s is the figure of merit
(target ≥ 0.5); server CPU ms per request says where the difference goes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import records
from common import HERE, TYPICAL, say
from loadgen import run_load
from server import Server, server_cpu


def _ratios(echo: dict[str, Any], service: dict[str, Any]) -> tuple[float, float]:
    rps = service["throughput_rps"] / max(echo["throughput_rps"], 1e-9)
    cpu = echo["server_cpu_ms_per_request"] / max(service["server_cpu_ms_per_request"], 1e-9)
    return round(rps, 3), round(cpu, 3)


def bench_floor(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    say(
        f"\n== echo floor: gunicorn, {args.workers} workers, same `serve` settings; order-sign, "
        f"{TYPICAL} resources, new patient each call; {args.floor_rounds} alternating rounds =="
    )
    echo = Server(
        tmp,
        workers=args.workers,
        threads=args.threads,
        launcher=[sys.executable, str(HERE / "echo_serve.py")],
    )
    service = Server(tmp, workers=args.workers, threads=args.threads)
    servers = {"echo": echo, "service": service}
    if getattr(args, "floor_code", None):
        # the other checkout's package first on the path; its bundled rules, this Python's packages
        code = Path(args.floor_code).resolve()
        servers["other"] = Server(
            tmp,
            workers=args.workers,
            threads=args.threads,
            launcher=[sys.executable, "-m", "cds_service.cli", "serve"],
            env={"PYTHONPATH": str(code)},
            cwd=code,
        )
        say(f"  other = the service of {code}")
    out: dict[str, Any] = {
        "rounds": args.floor_rounds,
        "runs": {name: [] for name in servers},
        "round_ratios": [],  # (by req/s, by CPU per request) of each round's echo/service pair
    }
    try:
        for s in servers.values():
            s.wait_ready()
        plan = [("/cds-services/order-sign", records.request_bytes(TYPICAL, "order-sign"))]
        for s in servers.values():
            run_load(s.port, plan, args.warm_seconds, connections=4, processes=2, vary="call")
        say(f"{'round  server':16} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'CPU ms/req':>10}")
        for i in range(args.floor_rounds):
            for name, s in servers.items():
                cpu0 = server_cpu(s)
                r = run_load(
                    s.port, plan, args.duration, args.connections, args.client_processes, vary="call"
                )
                r["server_cpu_ms_per_request"] = round(1000 * (server_cpu(s) - cpu0) / max(1, r["ok"]), 2)
                out["runs"][name].append(r)
                say(
                    f"{i + 1:<6} {name:9} {r['throughput_rps']:7.1f} {r['latency_ms']['p50']:7.2f} "
                    f"{r['latency_ms']['p99']:7.2f} {r['error_count']:6} "
                    f"{r['server_cpu_ms_per_request']:10.2f}"
                )
            echo_r, service_r = out["runs"]["echo"][-1], out["runs"]["service"][-1]
            out["round_ratios"].append(_ratios(echo_r, service_r))
            say(
                f"{'':6} ratio {out['round_ratios'][-1][0]:.2f}× by req/s, "
                f"{out['round_ratios'][-1][1]:.2f}× by CPU per request"
            )
    finally:
        for s in servers.values():
            s.stop()

    def mean(name: str, key: str) -> float:
        runs = out["runs"][name]
        return sum(r[key] for r in runs) / max(1, len(runs))

    out["echo_rps"] = round(mean("echo", "throughput_rps"), 1)
    out["service_rps"] = round(mean("service", "throughput_rps"), 1)
    out["echo_cpu_ms"] = round(mean("echo", "server_cpu_ms_per_request"), 2)
    out["service_cpu_ms"] = round(mean("service", "server_cpu_ms_per_request"), 2)
    out["ratio"] = round(out["service_rps"] / max(out["echo_rps"], 1e-9), 3)
    out["cpu_ratio"] = round(out["echo_cpu_ms"] / max(out["service_cpu_ms"], 1e-9), 3)
    if "other" in servers:
        out["other_rps"] = round(mean("other", "throughput_rps"), 1)
        out["other_cpu_ms"] = round(mean("other", "server_cpu_ms_per_request"), 2)
        out["other_ratio"] = round(out["other_rps"] / max(out["echo_rps"], 1e-9), 3)
    out["loadavg"] = os.getloadavg()[0]
    by_rps = [r for r, _ in out["round_ratios"]] or [0.0]
    say(
        f"  mean: echo {out['echo_rps']:.1f} req/s ({out['echo_cpu_ms']:.2f} ms CPU/req), service "
        f"{out['service_rps']:.1f} req/s ({out['service_cpu_ms']:.2f} ms CPU/req)\n"
        f"  RATIO service/echo = {out['ratio']:.2f}× by req/s (rounds {min(by_rps):.2f}–{max(by_rps):.2f}×), "
        f"{out['cpu_ratio']:.2f}× by server CPU per request · target ≥ 0.50× · load average "
        f"{out['loadavg']:.1f} on {os.cpu_count()} CPUs"
    )
    if "other" in servers:
        say(
            f"  other: {out['other_rps']:.1f} req/s ({out['other_cpu_ms']:.2f} ms CPU/req) → ratio "
            f"{out['other_ratio']:.2f}×"
        )
    return out
