"""In-process timings (the Flask test client and ``pipeline.run`` alone), linearity in record size, and
cProfile of the in-process call (``bench.py --parts inproc,linearity,profile``)."""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import records  # noqa: E402
from common import (  # noqa: E402
    HOOKS,
    LARGE,
    MODE_TEXT,
    TYPICAL,
    GcWatch,
    new_patient_body,
    percentile,
    say,
    summarize,
)

# "Linear": the marginal cost per added resource between consecutive sizes stays within this factor
# of the least-squares slope, and the straight-line fit explains ≥ 98 % of the variance.
LINEAR_SLOPE_TOLERANCE = 0.30
LINEAR_MIN_R2 = 0.98


def make_app(database: Path) -> Any:
    """The Flask app as ``serve --dev`` builds it; its JSON call log goes to /dev/null."""
    from cds_service.app import create_app
    from cds_service.config import Settings

    settings = Settings.from_env(database=database, insecure_no_auth=True, allow_time_override=True)
    real_stderr = sys.stderr
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the log handler keeps this stream
    try:
        app = create_app(settings)
    finally:
        sys.stderr = real_stderr
    return app


def timed_loop(
    fn: Any, iterations: int, budget_s: float, prepare: Any = None, min_iterations: int = 5
) -> tuple[list[float], list[float]]:
    """Call ``fn(prepare(i))`` (or ``fn()``) up to ``iterations`` times or until ``budget_s`` is
    spent (at least ``min_iterations``); ``prepare`` is not timed. Returns (wall ms, CPU ms of this
    thread) per call: CPU time is what the call costs whatever else runs on the machine, wall time
    includes waiting for a CPU."""
    wall: list[float] = []
    cpu: list[float] = []
    deadline = time.perf_counter() + budget_s
    for i in range(iterations):
        arg = prepare(i) if prepare else None
        c0 = time.thread_time()
        t0 = time.perf_counter()
        fn(arg) if prepare else fn()
        t1 = time.perf_counter()
        cpu.append((time.thread_time() - c0) * 1000)
        wall.append((t1 - t0) * 1000)
        if i + 1 >= min_iterations and t1 > deadline:
            break
    return wall, cpu


def bench_inproc(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from cds_service import pipeline
    from cds_service.services import SERVICES
    from cds_service.validation import parse_json, validate_request

    app = make_app(tmp / "inproc.sqlite3")
    client = app.test_client()
    state = app.extensions["ketamine_cds"]
    if args.gc_freeze:
        say(
            "\n(EXPERIMENT --gc-freeze: gc.collect(); gc.freeze() after create_app — "
            "not what serve does today)"
        )
        gc.collect()
        gc.freeze()
    results: dict[str, Any] = {}
    say(
        f"\n== in-process (Flask test client; warm-up {args.warmup}; per cell up to {args.iterations} calls "
        f"or {args.cell_budget:g} s; ms) =="
    )
    say(
        f"{'hook':12} {'size':>5} {'mode':6} | {'app p50':>7} {'p99':>7} {'mean':>7} "
        f"{'cpu50':>7} {'cpu99':>7} {'cpumean':>7} "
        f"{'n':>4} {'gc/call':>7} | {'pipe p50':>8} {'p99':>7} {'cpu50':>7} | {'parse+val':>9} | {'other':>6}"
    )
    for size in args.sizes:
        for hook in HOOKS:
            body = records.request_bytes(size, hook)
            path = f"/cds-services/{hook}"
            service = SERVICES[hook]

            def post(data: bytes, path: str = path) -> None:
                r = client.post(path, data=data, content_type="application/json")
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: HTTP {r.status_code} {r.get_data(as_text=True)[:300]}")

            for _ in range(args.warmup):
                post(body)
            _, parse_cpu = timed_loop(
                lambda body=body, service=service: validate_request(parse_json(body), service),
                args.iterations,
                args.cell_budget / 8,
            )
            v = summarize(parse_cpu)
            for mode in args.modes:
                if mode == "new":
                    prep_body = lambda i, body=body: new_patient_body(body)  # noqa: E731
                else:
                    prep_body = lambda i, body=body: body  # noqa: E731
                with GcWatch() as gcw:
                    app_ms, app_cpu = timed_loop(post, args.iterations, args.cell_budget, prepare=prep_body)

                stages: dict[str, list[float]] = {"fhir_ms": [], "rules_ms": [], "cards_ms": []}
                fixed = validate_request(parse_json(body), service)

                def prep_request(
                    i: int,
                    mode: str = mode,
                    body: bytes = body,
                    service: Any = service,
                    fixed: dict[str, Any] = fixed,
                ) -> dict[str, Any]:
                    if mode == "new":
                        return validate_request(parse_json(new_patient_body(body)), service)
                    return fixed

                def run_pipeline(request: dict[str, Any], stages: dict[str, list[float]] = stages) -> None:
                    outcome = pipeline.run(request, state.rules.get(), state.settings)
                    for k in stages:
                        stages[k].append(outcome.timings[k])

                pipe_ms, pipe_cpu = timed_loop(
                    run_pipeline, args.iterations, args.cell_budget / 2, prepare=prep_request
                )
                a, ac = summarize(app_ms), summarize(app_cpu)
                p, pc = summarize(pipe_ms), summarize(pipe_cpu)
                other = ac["p50"] - pc["p50"] - v["p50"]
                gc_per_call = gcw.total_ms / max(1, len(app_ms))
                results.setdefault(hook, {}).setdefault(mode, {})[str(size)] = {
                    "size": size,
                    "body_bytes": len(body),
                    "app_ms": a,
                    "app_cpu_ms": ac,
                    "gc_ms_per_call": round(gc_per_call, 3),
                    "gc_max_pause_ms": round(gcw.max_ms, 3),
                    "gc_full_collections": gcw.full,
                    "pipeline_ms": p,
                    "pipeline_cpu_ms": pc,
                    "parse_validate_cpu_ms": v,
                    "pipeline_stages_p50_ms": {
                        k: round(percentile(sorted(x), 50), 3) for k, x in stages.items()
                    },
                    "other_cpu_p50_ms": round(other, 3),
                }
                say(
                    f"{hook:12} {size:5} {mode:6} | {a['p50']:7.2f} {a['p99']:7.2f} {a['mean']:7.2f} "
                    f"{ac['p50']:7.2f} {ac['p99']:7.2f} {ac['mean']:7.2f} {a['n']:4} {gc_per_call:7.2f} | "
                    f"{p['p50']:8.2f} {p['p99']:7.2f} {pc['p50']:7.2f} | {v['p50']:9.2f} | {other:6.2f}"
                )
    say(
        "  app = POST through Flask (JSON parse + depth check, schema validation, pipeline, shown cards to "
        "SQLite, call log, JSON response); wall ms unless 'cpu'"
    )
    say(
        "  mode new = a new patient every call (nothing cached from earlier calls applies); repeat = the "
        "identical request again"
    )
    say("  gc/call = mean ms per call spent in Python's cyclic garbage collector (inside the app timings)")
    say(
        "  cpumean is what a server's CPU ms per request compares with: a p50 hides the calls that pay for "
        "a collection"
    )
    say("  pipe = pipeline.run alone on the parsed request (prefetch → record → facts → rules → cards)")
    say(
        "  parse+val = CPU p50 of parse_json + validate_request; other = app cpu50 − pipe cpu50 − parse+val "
        "(Flask, shown-card insert, call log, jsonify)"
    )
    for hook in HOOKS:
        for mode in args.modes:
            parts = []
            for size in args.sizes:
                st = results[hook][mode][str(size)]["pipeline_stages_p50_ms"]
                parts.append(f"{size}: {st['fhir_ms']:.2f}/{st['rules_ms']:.2f}/{st['cards_ms']:.2f}")
            say(
                f"  {hook} {mode}: pipeline stages p50 ms (prefetch/record+facts+rules/cards) "
                + "; ".join(parts)
            )
    return results


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    return slope, intercept, (1 - ss_res / ss_tot if ss_tot else 1.0)


def linearity(
    inproc: dict[str, Any], sizes: list[int], modes: list[str], hook: str = "order-sign"
) -> dict[str, Any]:
    out: dict[str, Any] = {"hook": hook}
    for mode in modes:
        cells = inproc.get(hook, {}).get(mode, {})
        rows = [
            (
                s,
                cells[str(s)]["app_cpu_ms"]["p50"],
                cells[str(s)]["pipeline_cpu_ms"]["p50"],
                cells[str(s)]["app_ms"]["p50"],
            )
            for s in sizes
            if str(s) in cells
        ]
        say(f"\n== linearity ({hook}, {MODE_TEXT[mode]}; in-process CPU ms p50, wall p50 for reference) ==")
        say(
            f"{'size':>5} | {'app ms':>8} {'ms/res':>7} | {'pipeline ms':>11} {'ms/res':>7} | "
            f"{'marginal ms/res':>15} | {'wall ms':>8}"
        )
        res: dict[str, Any] = {"rows": []}
        prev = None
        for size, app_ms, pipe_ms, wall_ms in rows:
            marginal = (app_ms - prev[1]) / (size - prev[0]) if prev else None
            res["rows"].append(
                {
                    "size": size,
                    "app_cpu_p50_ms": app_ms,
                    "app_ms_per_resource": app_ms / size,
                    "pipeline_cpu_p50_ms": pipe_ms,
                    "pipeline_ms_per_resource": pipe_ms / size,
                    "marginal_ms_per_resource": marginal,
                    "app_wall_p50_ms": wall_ms,
                }
            )
            marg = "" if marginal is None else f"{marginal:.4f}"
            say(
                f"{size:5} | {app_ms:8.2f} {app_ms / size:7.4f} | {pipe_ms:11.2f} {pipe_ms / size:7.4f} | "
                f"{marg:>15} | {wall_ms:8.2f}"
            )
            prev = (size, app_ms)
        if len(rows) >= 3:
            slope, intercept, r2 = fit_line([r[0] for r in rows], [r[1] for r in rows])
            marginals = [r["marginal_ms_per_resource"] for r in res["rows"][1:]]
            within = all(abs(m - slope) <= LINEAR_SLOPE_TOLERANCE * slope for m in marginals)
            res.update(
                slope_ms_per_resource=slope,
                intercept_ms=intercept,
                r2=r2,
                linear=within and r2 >= LINEAR_MIN_R2,
                marginals_within_tolerance=within,
            )
            say(
                f"  fit: {intercept:.2f} ms + {slope * 1000:.2f} ms per 1,000 resources, R² = {r2:.4f}; "
                f"every "
                f"marginal cost within ±{LINEAR_SLOPE_TOLERANCE:.0%} of the fit: {'yes' if within else 'no'}"
            )
        else:
            say("  (needs at least three sizes)")
        out[mode] = res
    return out


def bench_profile(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    app = make_app(tmp / "profile.sqlite3")
    client = app.test_client()
    out: dict[str, Any] = {}
    for size in (TYPICAL, LARGE):
        body = records.request_bytes(size, "order-sign")
        n = args.profile_iterations if size == TYPICAL else max(5, args.profile_iterations // 10)
        bodies = [new_patient_body(body) if args.profile_mode == "new" else body for _ in range(n + 3)]
        for b in bodies[:3]:  # warm-up (in repeat mode this also fills the caches the timed calls hit)
            client.post("/cds-services/order-sign", data=b, content_type="application/json")
        bodies = bodies[3:]
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for b in bodies:
            client.post("/cds-services/order-sign", data=b, content_type="application/json")
        prof.disable()
        wall = (time.perf_counter() - t0) * 1000 / n
        stats = pstats.Stats(prof)
        rows = []
        for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            rows.append(
                {
                    "function": f"{_short(file)}:{line}({func})",
                    "calls_per_request": nc / n,
                    "tottime_ms": tt * 1000 / n,
                    "cumtime_ms": ct * 1000 / n,
                }
            )
        by_cum = sorted(rows, key=lambda r: -r["cumtime_ms"])[: args.profile_top]
        by_tot = sorted(rows, key=lambda r: -r["tottime_ms"])[: args.profile_top]
        out[str(size)] = {
            "iterations": n,
            "mode": args.profile_mode,
            "wall_ms_per_request_under_profiler": wall,
            "top_cumulative": by_cum,
            "top_tottime": by_tot,
        }
        say(
            f"\n== profile: order-sign, {size} resources, {MODE_TEXT[args.profile_mode]}, {n} requests "
            f"({wall:.1f} ms/request under cProfile, which roughly doubles Python-heavy code) =="
        )
        say(f"  {'cum ms/req':>10} {'own ms/req':>10} {'calls/req':>9}  function   [by cumulative]")
        for r in by_cum:
            say(
                f"  {r['cumtime_ms']:10.2f} {r['tottime_ms']:10.2f} {r['calls_per_request']:9.0f}  "
                f"{r['function']}"
            )
        say(f"  {'cum ms/req':>10} {'own ms/req':>10} {'calls/req':>9}  function   [by own time]")
        for r in by_tot:
            say(
                f"  {r['cumtime_ms']:10.2f} {r['tottime_ms']:10.2f} {r['calls_per_request']:9.0f}  "
                f"{r['function']}"
            )
        if args.profile_dump:
            path = Path(f"{args.profile_dump}.{size}.pstats")
            stats.dump_stats(path)
            say(f"  (pstats written to {path})")
    return out


def _short(file: str) -> str:
    for marker in ("site-packages/", "cds_service/", "lib/python3"):
        if marker in file:
            return (marker if marker == "cds_service/" else "") + file.split(marker, 1)[1]
    return file
