"""Durability and soak checks against gunicorn (prints numbers; not a test).

Parts (``--parts``, default both):

* ``soak``      mixed hooks (patient-view, order-select, order-sign; the typical record) at a fixed
                rate (default 300 req/s, open loop) for ``--duration`` seconds against
                ``ketamine-cds serve --dev --workers 2``. Reports errors (0 expected), achieved rate,
                p50/p99 latency, and the resident memory (VmRSS) of the gunicorn master and workers
                sampled after warm-up and at the end (growth target < 10 %).
* ``feedback``  several client threads each get cards (order-sign) and POST CDS Hooks 2.0.1 feedback
                (``outcome: overridden`` with an ``overrideReason``) for every card, while one gunicorn
                worker is killed with SIGKILL mid-run. Every feedback POST answered HTTP 200 is
                acknowledged; afterwards the SQLite database (table ``feedback``, column
                ``card_uuid``) must hold every acknowledged card: prints acknowledged / present /
                missing.

    .venv/bin/python bench/load.py                         # both parts, ~90 s
    .venv/bin/python bench/load.py --parts soak --duration 300 --rate 200
    .venv/bin/python bench/load.py --parts feedback --feedback-duration 30 --kills 2 --json

Needs only the standard library and the project (the load generator is ``loadgen.run_load``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import loadgen  # noqa: E402
import records  # noqa: E402
import server as serving  # noqa: E402

RSS_GROWTH_TARGET = 0.10
OVERRIDE_SYSTEM = "https://ketamine-cds.github.io/override-reasons"  # fallback if cards.py changes


def say(text: str = "") -> None:
    common.say(text)


def _override_system() -> str:
    try:
        from cds_service.cards import OVERRIDE_SYSTEM as system

        return system
    except ImportError:
        return OVERRIDE_SYSTEM


# -- memory -----------------------------------------------------------------------------------------
def rss_snapshot(server: serving.Server) -> dict[str, Any]:
    workers = server.worker_pids()
    master = serving.rss_kib(server.pid) or 0
    per_worker = {pid: serving.rss_kib(pid) or 0 for pid in workers}
    return {
        "t": time.monotonic(),
        "master_kib": master,
        "workers_kib": per_worker,
        "total_kib": master + sum(per_worker.values()),
    }


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


# -- soak -------------------------------------------------------------------------------------------
def soak(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    size = args.size
    plan = [(f"/cds-services/{h}", records.request_bytes(size, h)) for h in records.HOOKS]
    patients = {
        "session": "a new patient per view→select→sign session",
        "call": "a new patient per call",
        None: "the same three requests repeated",
    }[args.vary]
    say(
        f"\n== soak: mixed hooks, {size}-resource record ({patients}), {args.rate:g} req/s open loop for "
        f"{args.duration:g} s, gunicorn {args.workers} workers, {args.connections} connections =="
    )
    server = serving.Server(tmp, workers=args.workers, threads=args.threads)
    out: dict[str, Any] = {"rate_target_rps": args.rate, "duration_s": args.duration, "size": size}
    try:
        server.wait_ready()
        cold = rss_snapshot(server)
        workers_before = set(server.worker_pids())
        # warm-up at the target rate so caches, imports and allocator pools reach their steady size
        loadgen.run_load(
            server.port,
            plan,
            args.warm_seconds,
            args.connections,
            args.client_processes,
            rate=args.rate,
            vary=args.vary,
        )
        start = rss_snapshot(server)
        samples: list[dict[str, Any]] = [start]
        next_sample = [args.sample_every]

        def tick(elapsed: float) -> None:
            if elapsed >= next_sample[0]:
                samples.append(rss_snapshot(server))
                next_sample[0] += args.sample_every

        cpu0 = serving.server_cpu(server)
        r = loadgen.run_load(
            server.port,
            plan,
            args.duration,
            args.connections,
            args.client_processes,
            rate=args.rate,
            vary=args.vary,
            on_tick=tick,
        )
        r["server_cpu_s"] = round(serving.server_cpu(server) - cpu0, 2)
        end = rss_snapshot(server)
        samples.append(end)
        workers_after = set(server.worker_pids())
        growth = (end["total_kib"] - start["total_kib"]) / start["total_kib"] if start["total_kib"] else 0.0
        worker_growth = {
            str(pid): round((end["workers_kib"].get(pid, 0) - kib) / kib, 4) if kib else None
            for pid, kib in start["workers_kib"].items()
        }
        booted = server.log_path.read_text(errors="replace").count("Booting worker")
        out.update(
            load=r,
            rss_cold_kib=cold["total_kib"],
            rss_start_kib=start["total_kib"],
            rss_end_kib=end["total_kib"],
            rss_growth=round(growth, 4),
            rss_worker_growth=worker_growth,
            rss_samples_total_kib=[s["total_kib"] for s in samples],
            rss_start=start,
            rss_end=end,
            worker_pids_changed=workers_before != workers_after,
            workers_booted=booted,
        )
        lat, sched = r["latency_ms"], r["scheduled_latency_ms"]
        say(
            f"  requests {r['requests']} · HTTP 200 {r['ok']} · errors {r['error_count']} {r['errors'] or ''}"
            f" · achieved {r['throughput_rps']:.1f} req/s over {r['duration_s']:.1f} s"
            f" · scheduled but never sent (client fell behind): {r['scheduled_not_sent']}"
        )
        say(
            f"  latency ms (send → response): p50 {lat['p50']:.2f} · p90 {lat['p90']:.2f} · "
            f"p99 {lat['p99']:.2f} · max {lat['max']:.2f}"
        )
        say(
            f"  latency ms (scheduled send → response, includes queueing at the client): "
            f"p50 {sched['p50']:.2f} · p99 {sched['p99']:.2f} · max {sched['max']:.2f}"
        )
        say(
            f"  CPU: server {r['server_cpu_s'] / r['duration_s']:.2f} cores, load generator "
            f"{r['client_cpu_s'] / r['duration_s']:.2f} cores (of {os.cpu_count()})"
        )
        say(
            f"  RSS master+workers: cold {_mib(cold['total_kib'])} → after warm-up {_mib(start['total_kib'])}"
            f" → end {_mib(end['total_kib'])}: growth {growth:+.1%} (target < {RSS_GROWTH_TARGET:.0%})"
        )
        say(
            "  RSS per process (start → end): master "
            f"{_mib(start['master_kib'])} → {_mib(end['master_kib'])}; "
            + "; ".join(
                f"worker {pid} {_mib(kib)} → {_mib(end['workers_kib'].get(pid, 0))}"
                for pid, kib in start["workers_kib"].items()
            )
        )
        say(
            f"  RSS total every ~{args.sample_every:g} s: "
            + " ".join(f"{s['total_kib'] / 1024:.0f}" for s in samples)
            + " MiB"
        )
        if workers_before != workers_after or booted != args.workers:
            say(f"  NOTE: worker processes changed during the run ({booted} 'Booting worker' lines)")
        out["pass_errors"] = r["error_count"] == 0
        out["pass_rate"] = r["throughput_rps"] >= 0.97 * args.rate
        out["pass_rss"] = growth < RSS_GROWTH_TARGET
    finally:
        server.stop()
    return out


# -- feedback under a killed worker -----------------------------------------------------------------
def _feedback_body(cards: list[dict[str, Any]], system: str) -> bytes:
    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    entries = [
        {
            "card": c["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": ts,
            "overrideReason": {
                "reason": {
                    "system": system,
                    "code": "already-addressed",
                    "display": "Already addressed or monitored",
                },
                "userComment": "bench/load.py durability check",
            },
        }
        for c in cards
    ]
    return json.dumps({"feedback": entries}).encode()


def _feedback_thread(port: int, body: bytes, end: float, system: str, out: dict[str, Any]) -> None:
    conn = loadgen.Conn(port, timeout=15)
    acked: list[str] = []
    attempted_cards: list[str] = []
    errors: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    while time.monotonic() < end:
        try:
            status, data = conn.request("POST", "/cds-services/order-sign", body)
        except Exception as exc:  # noqa: BLE001 - a killed worker drops connections
            errors[f"cards: {type(exc).__name__}"] += 1
            time.sleep(0.05)
            continue
        if status != 200:
            errors[f"cards: HTTP {status}"] += 1
            continue
        counts["card calls ok"] += 1
        cards = json.loads(data)["cards"]
        if not cards:
            continue
        uuids = [c["uuid"] for c in cards]
        attempted_cards += uuids
        counts["feedback POSTs"] += 1
        try:
            status, data = conn.request(
                "POST", "/cds-services/order-sign/feedback", _feedback_body(cards, system)
            )
        except Exception as exc:  # noqa: BLE001
            errors[f"feedback: {type(exc).__name__}"] += 1
            continue
        if status == 200:
            stored = json.loads(data).get("stored")
            if stored != len(uuids):
                errors[f"feedback: stored {stored} of {len(uuids)}"] += 1
            counts["feedback acknowledged"] += 1
            acked += uuids
        else:
            errors[f"feedback: HTTP {status}"] += 1
    conn.close()
    out.update(acked=acked, attempted=attempted_cards, errors=errors, counts=counts)


def _present(database: Path, uuids: set[str]) -> tuple[set[str], int]:
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        rows = {r[0] for r in db.execute("SELECT card_uuid FROM feedback")}
        total = db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    finally:
        db.close()
    return uuids & rows, total


def feedback(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    say(
        f"\n== feedback durability: {args.feedback_threads} client threads for {args.feedback_duration:g} s, "
        f"SIGKILL of {args.kills} gunicorn worker(s) mid-run =="
    )
    database = tmp / "feedback-durability.sqlite3"
    server = serving.Server(tmp, workers=args.workers, threads=args.threads, database=database)
    body = records.request_bytes(records.SIZES["typical"], "order-sign")
    system = _override_system()
    out: dict[str, Any] = {"threads": args.feedback_threads, "duration_s": args.feedback_duration}
    try:
        server.wait_ready()
        end = time.monotonic() + args.feedback_duration
        outs: list[dict[str, Any]] = [{} for _ in range(args.feedback_threads)]
        threads = [
            threading.Thread(target=_feedback_thread, args=(server.port, body, end, system, o), daemon=True)
            for o in outs
        ]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        kills: list[dict[str, Any]] = []
        for k in range(args.kills):
            kill_at = t_start + args.feedback_duration * (k + 1) / (args.kills + 1)
            time.sleep(max(0.0, kill_at - time.monotonic()))
            before = server.worker_pids()
            if not before:
                kills.append({"error": "no worker found"})
                continue
            victim = before[k % len(before)]
            os.kill(victim, signal.SIGKILL)
            t_kill = time.monotonic()
            replacement = None
            while time.monotonic() - t_kill < 30:
                now_pids = server.worker_pids()
                new = [p for p in now_pids if p not in before]
                if new and len(now_pids) >= args.workers:
                    replacement = new[0]
                    break
                time.sleep(0.02)
            kills.append(
                {
                    "killed_pid": victim,
                    "at_s": round(t_kill - t_start, 2),
                    "replacement_pid": replacement,
                    "respawn_s": round(time.monotonic() - t_kill, 2) if replacement else None,
                }
            )
        for t in threads:
            t.join()
        acked: set[str] = set()
        attempted: set[str] = set()
        errors: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        for o in outs:
            acked |= set(o["acked"])
            attempted |= set(o["attempted"])
            errors.update(o["errors"])
            counts.update(o["counts"])
        present_live, rows_live = _present(database, acked)
    finally:
        server.stop()
    present_after, rows_after = _present(database, acked)
    unacked_present, _ = _present(database, attempted - acked)
    missing = sorted(acked - present_after)
    out.update(
        kills=kills,
        counts=dict(counts),
        errors=dict(errors),
        acknowledged=len(acked),
        present=len(present_after),
        missing=len(missing),
        missing_uuids=missing[:20],
        present_while_running=len(present_live),
        feedback_rows=rows_after,
        unacknowledged_but_stored=len(unacked_present),
        pass_durable=not missing,
        pass_kill_happened=all(k.get("killed_pid") for k in kills) and bool(kills),
    )
    for k in kills:
        say(
            f"  killed worker {k.get('killed_pid')} at {k.get('at_s')} s; "
            f"replacement {k.get('replacement_pid')} "
            f"after {k.get('respawn_s')} s"
        )
    say(
        f"  card calls ok {counts['card calls ok']} · feedback POSTs {counts['feedback POSTs']} · "
        f"acknowledged (HTTP 200) {counts['feedback acknowledged']}"
    )
    say(f"  failed requests: {dict(errors) or 'none'}")
    say(
        f"  feedback entries: acknowledged {len(acked)} / present {len(present_after)} / "
        f"missing {len(missing)}"
        f"  (present while the server still ran: {len(present_live)}; rows in table: {rows_after}; "
        f"stored although the client got no 200: {len(unacked_present)})"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="soak,feedback", help="comma list of soak, feedback (default both)")
    p.add_argument("--duration", type=float, default=60.0, help="soak seconds (default 60)")
    p.add_argument("--rate", type=float, default=300.0, help="soak requests/s in total (default 300)")
    p.add_argument(
        "--size", type=int, default=records.SIZES["typical"], help="soak record size (default 200)"
    )
    p.add_argument(
        "--vary",
        choices=("session", "call", "none"),
        default="session",
        help="soak patients: a new one per view→select→sign session (default), per call, or none "
        "(the same three requests again and again)",
    )
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections (default 16)")
    p.add_argument("--client-processes", type=int, default=4, help="load generator processes (default 4)")
    p.add_argument("--warm-seconds", type=float, default=5.0, help="soak warm-up at the rate (default 5)")
    p.add_argument("--sample-every", type=float, default=5.0, help="RSS sample interval (default 5 s)")
    p.add_argument("--feedback-duration", type=float, default=20.0, help="feedback run seconds (default 20)")
    p.add_argument("--feedback-threads", type=int, default=8, help="feedback client threads (default 8)")
    p.add_argument("--kills", type=int, default=1, help="workers to SIGKILL during the feedback run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="gunicorn threads per worker (default 4)")
    p.add_argument("--json", action="store_true", help="machine-readable results on stdout")
    args = p.parse_args(argv)
    args.vary = None if args.vary == "none" else args.vary
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if parts - {"soak", "feedback"}:
        p.error(f"unknown parts: {sorted(parts - {'soak', 'feedback'})}")
    if args.json:
        common.OUT = sys.stderr
    t0 = time.perf_counter()
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}}
    say(f"ketamine-cds load checks · {os.cpu_count()} CPUs · parts {sorted(parts)}")
    for h in records.HOOKS:
        records.request_bytes(args.size, h)
    records.request_bytes(records.SIZES["typical"], "order-sign")
    with tempfile.TemporaryDirectory(prefix="ketamine-load-") as tmpdir:
        tmp = Path(tmpdir)
        if "soak" in parts:
            results["soak"] = soak(args, tmp)
        if "feedback" in parts:
            results["feedback"] = feedback(args, tmp)
    say("\n== verdicts ==")
    if "soak" in results:
        s = results["soak"]
        say(f"  {common.verdict(s['pass_errors'])}  soak: 0 errors (got {s['load']['error_count']})")
        say(
            f"  {common.verdict(s['pass_rate'])}  soak: sustained {args.rate:g} req/s (achieved "
            f"{s['load']['throughput_rps']:.1f}); p99 {s['load']['latency_ms']['p99']:.2f} ms"
        )
        say(f"  {common.verdict(s['pass_rss'])}  soak: RSS growth < 10 % (got {s['rss_growth']:+.1%})")
    if "feedback" in results:
        f = results["feedback"]
        say(
            f"  {common.verdict(f['pass_durable'])}  feedback: every acknowledged entry stored "
            f"({f['acknowledged']} acknowledged / {f['present']} present / {f['missing']} missing)"
        )
        if not f["pass_kill_happened"]:
            say("  MISS  feedback: the worker kill did not happen as planned")
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    say(
        f"\nload average at start {results['machine']['loadavg_start'][0]:.2f}, at end "
        f"{results['machine']['loadavg_end'][0]:.2f} · total wall time {results['wall_s']} s"
    )
    if args.json:
        json.dump(results, sys.stdout, indent=2, default=str)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
