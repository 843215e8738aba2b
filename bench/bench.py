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
import cProfile
import gc
import http.client
import itertools
import json
import math
import multiprocessing as mp
import os
import pstats
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import records  # noqa: E402

HOOKS = records.HOOKS
TYPICAL = records.SIZES["typical"]
LARGE = records.SIZES["large"]
DEFAULT_SIZES = (TYPICAL, records.SIZES["1k"], records.SIZES["2k"], LARGE)
MODES = ("new", "repeat")
MODE_TEXT = {"new": "new patient each call", "repeat": "same request repeated"}

TARGETS = {
    "inproc_order_sign_p50_ms": 5.0,
    "inproc_order_sign_p99_ms": 15.0,
    "http_throughput_rps": 300.0,
    "large_record_ms": 100.0,
    "floor_ratio": 0.5,
}
# "Linear": the marginal cost per added resource between consecutive sizes stays within this factor
# of the least-squares slope, and the straight-line fit explains ≥ 98 % of the variance.
LINEAR_SLOPE_TOLERANCE = 0.30
LINEAR_MIN_R2 = 0.98

OUT = sys.stdout  # tables; switched to stderr with --json
_PATIENTS = itertools.count(1)


def say(text: str = "") -> None:
    print(text, file=OUT, flush=True)


def new_patient_body(body: bytes, tag: str = "n") -> bytes:
    """``body`` for a patient never seen before (and a new hookInstance)."""
    return records.patient_variant(body, f"{tag}{next(_PATIENTS):09d}", str(uuid.uuid4()))


# -- statistics -------------------------------------------------------------------------------------
def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[min(k, len(sorted_values) - 1)]


def summarize(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    if not s:
        nan = float("nan")
        return {"n": 0, "p50": nan, "p90": nan, "p99": nan, "mean": nan, "max": nan}
    return {
        "n": len(s),
        "p50": round(percentile(s, 50), 3),
        "p90": round(percentile(s, 90), 3),
        "p99": round(percentile(s, 99), 3),
        "mean": round(sum(s) / len(s), 3),
        "max": round(s[-1], 3),
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


class GcWatch:
    """Time spent in the cyclic garbage collector (all generations) while active."""

    def __init__(self) -> None:
        self.total_ms = 0.0
        self.max_ms = 0.0
        self.full = 0
        self._t0 = 0.0

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            ms = (time.perf_counter() - self._t0) * 1000
            self.total_ms += ms
            self.max_ms = max(self.max_ms, ms)
            self.full += info.get("generation") == 2

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)


# -- in-process -------------------------------------------------------------------------------------
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
        f"{'cpu50':>7} {'cpu99':>7} "
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
                    f"{ac['p50']:7.2f} {ac['p99']:7.2f} {a['n']:4} {gc_per_call:7.2f} | {p['p50']:8.2f} "
                    f"{p['p99']:7.2f} {pc['p50']:7.2f} | {v['p50']:9.2f} | {other:6.2f}"
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


# -- gunicorn ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``ketamine-cds serve --dev`` as a subprocess (the process is gunicorn's master); ``launcher``
    replaces ``ketamine-cds`` (e.g. ``[python, bench/echo_serve.py]`` for the echo floor); ``env``
    is added to this process's environment; ``cwd`` is where it runs (``python -m`` imports from there)."""

    def __init__(
        self,
        tmp: Path,
        workers: int = 2,
        threads: int | None = None,
        port: int | None = None,
        database: Path | None = None,
        launcher: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.port = port or free_port()
        self.database = database or tmp / f"serve-{self.port}.sqlite3"
        self.log_path = tmp / f"serve-{self.port}.log"
        exe = shutil.which("ketamine-cds", path=str(ROOT / ".venv" / "bin")) or shutil.which("ketamine-cds")
        if exe is None:
            raise SystemExit("ketamine-cds not found (install the project into .venv)")
        cmd = [
            *(launcher or [exe, "serve"]),
            "--dev",
            "--workers",
            str(workers),
            "--port",
            str(self.port),
            "--database",
            str(self.database),
        ]
        if threads:
            cmd += ["--threads", str(threads)]
        self.cmd = cmd
        self.workers = workers
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self.ready_s: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"server exited with {self.proc.returncode}; see {self.log_path}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/healthz")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200 and len(self.worker_pids()) >= self.workers:
                    self.ready_s = round(time.monotonic() - self.started, 2)
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"server not ready after {timeout} s; see {self.log_path}")

    def worker_pids(self) -> list[int]:
        return children_of(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def children_of(pid: int) -> list[int]:
    """Child processes of ``pid`` (from /proc/<pid>/task/*/children, else a /proc scan)."""
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(k) for k in (task / "children").read_text().split()]
        return sorted(set(kids))
    except OSError:
        pass
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                kids.append(int(entry.name))
    return sorted(kids)


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime+stime of a process (all its threads), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def server_cpu(server: Server) -> float:
    return sum(cpu_seconds(p) or 0.0 for p in [server.pid, *server.worker_pids()])


# -- load generator ---------------------------------------------------------------------------------
class Conn:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed it while idle (as
    urllib3 does), so an idle-timeout close is not counted as an error."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port, self.timeout = port, timeout
        self.c: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def _idle_dropped(self) -> bool:
        sock = self.c.sock if self.c else None
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)  # an idle keep-alive socket is readable only at EOF

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.c is None or self._idle_dropped():
            if self.c is not None:
                self.c.close()
                self.reconnects += 1
            self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            self.c.request(method, path, body=body, headers=headers)
            r = self.c.getresponse()
            data = r.read()
        except BaseException:
            self.c.close()
            self.c = None
            raise
        if r.will_close:
            self.c.close()
            self.c = None
        return r.status, data

    def close(self) -> None:
        if self.c is not None:
            self.c.close()


def _load_thread(
    port: int,
    plan: list[tuple[str, bytes]],
    vary: str | None,
    idx: int,
    start: float,
    end: float,
    interval: float | None,
    phase: float,
    out: dict[str, Any],
) -> None:
    conn = Conn(port)
    lat: list[float] = []  # ms, send → full response
    sched_lat: list[float] = []  # ms, scheduled send → full response (open loop only)
    errors: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    not_sent = 0  # open loop: sends scheduled before ``end`` that the connection never got to
    i = 0
    next_t = start + phase
    while True:
        now = time.monotonic()
        if interval is None:
            if now >= end:
                break
            if now < start:
                time.sleep(start - now)
        else:
            if next_t >= end:
                break
            if now >= end:  # overloaded: the rest of the schedule is never sent
                not_sent += math.ceil((end - next_t) / interval)
                break
            if next_t > now:
                time.sleep(next_t - now)
        path, body = plan[(idx + i) % len(plan)] if vary != "session" else plan[i % len(plan)]
        if vary == "call":
            body = records.patient_variant(body, f"c{idx:03d}x{i:08d}", str(uuid.uuid4()))
        elif vary == "session":  # one patient per pass through the plan (e.g. view → select → sign)
            body = records.patient_variant(body, f"s{idx:03d}x{i // len(plan):08d}", str(uuid.uuid4()))
        i += 1
        t0 = time.monotonic()
        try:
            status, _ = conn.request("POST", path, body)
            statuses[status] += 1
            if status != 200:
                errors[f"HTTP {status}"] += 1
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors[type(exc).__name__] += 1
        t1 = time.monotonic()
        lat.append((t1 - t0) * 1000)
        if interval is not None:
            sched_lat.append((t1 - next_t) * 1000)
            next_t += interval
    conn.close()
    out.update(
        lat=lat,
        sched_lat=sched_lat,
        errors=errors,
        statuses=statuses,
        reconnects=conn.reconnects,
        last=time.monotonic(),
        not_sent=not_sent,
    )


def _load_process(
    port: int,
    plan: list[tuple[str, bytes]],
    vary: str | None,
    threads: int,
    first: int,
    start: float,
    end: float,
    interval: float | None,
    conns_total: int,
    queue: Any,
) -> None:
    outs: list[dict[str, Any]] = [{} for _ in range(threads)]
    ts = []
    for t in range(threads):
        idx = first + t
        phase = (interval or 0) * idx / max(conns_total, 1)
        th = threading.Thread(
            target=_load_thread,
            args=(port, plan, vary, idx, start, end, interval, phase, outs[t]),
            daemon=True,
        )
        th.start()
        ts.append(th)
    for th in ts:
        th.join()
    cpu = os.times()
    queue.put({"outs": outs, "cpu": cpu.user + cpu.system})


def run_load(
    port: int,
    plan: list[tuple[str, bytes]],
    duration: float,
    connections: int,
    processes: int,
    rate: float | None = None,
    vary: str | None = None,
    on_tick: Any = None,
) -> dict[str, Any]:
    """Drive the server with ``connections`` keep-alive connections spread over ``processes`` client
    processes (threads inside). Closed loop (each connection sends again as soon as it has its
    answer) unless ``rate`` (requests/s in total) is given: then open loop with evenly spaced send
    times; a late answer delays that connection's next send, ``scheduled_latency_ms`` counts the wait
    and sends still pending at the end are reported as ``scheduled_not_sent``.

    ``vary``: None sends the plan's bodies as they are; "call" makes every request a new patient;
    "session" keeps one patient for each pass through the plan (patient-view → order-select →
    order-sign)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    processes = max(1, min(processes, connections))
    per = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    start = time.monotonic() + 0.3
    end = start + duration
    interval = connections / rate if rate else None
    procs = []
    first = 0
    for n in per:
        p = ctx.Process(
            target=_load_process,
            args=(port, plan, vary, n, first, start, end, interval, connections, queue),
            daemon=True,
        )
        p.start()
        procs.append(p)
        first += n
    if on_tick is not None:
        while time.monotonic() < end:
            on_tick(time.monotonic() - start)
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    lat: list[float] = []
    sched: list[float] = []
    errors: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    reconnects = not_sent = 0
    last = start
    client_cpu = 0.0
    for r in results:
        client_cpu += r["cpu"]
        for o in r["outs"]:
            lat += o["lat"]
            sched += o["sched_lat"]
            errors.update(o["errors"])
            statuses.update(o["statuses"])
            reconnects += o["reconnects"]
            not_sent += o["not_sent"]
            last = max(last, o["last"])
    elapsed = max(duration, last - start)
    ok = statuses.get(200, 0)
    return {
        "duration_s": round(elapsed, 2),
        "connections": connections,
        "client_processes": processes,
        "mode": "closed-loop" if rate is None else f"open-loop {rate:g} req/s",
        "vary": vary,
        "requests": len(lat),
        "ok": ok,
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "throughput_rps": round(ok / elapsed, 1),
        "latency_ms": summarize(lat),
        "scheduled_latency_ms": summarize(sched) if rate else None,
        "scheduled_not_sent": not_sent if rate else None,
        "reconnects": reconnects,
        "client_cpu_s": round(client_cpu, 2),
    }


def warm_server(server: Server, sizes: list[int], seconds: float = 3.0) -> None:
    """Every worker sees every hook and size (imports done, validators compiled)."""
    plan = [(f"/cds-services/{h}", records.request_bytes(s, h)) for s in sizes for h in HOOKS]
    run_load(server.port, plan, seconds, connections=max(4, 2 * server.workers), processes=2, vary="call")


def sequential(
    port: int, body: bytes, n: int, new_patient: bool, hook: str = "order-sign"
) -> dict[str, float]:
    conn = Conn(port)
    lat = []
    for _ in range(n):
        data = new_patient_body(body, "q") if new_patient else body
        t0 = time.perf_counter()
        status, resp = conn.request("POST", f"/cds-services/{hook}", data)
        lat.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {resp[:300]!r}")
    conn.close()
    return summarize(lat)


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


# -- profile ----------------------------------------------------------------------------------------
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
    global OUT
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--parts",
        default="inproc,http,linearity,floor",
        help="comma list of inproc, http, linearity, floor, profile (default: inproc,http,linearity,floor)",
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
    unknown = parts - {"inproc", "http", "linearity", "floor", "profile"}
    if unknown:
        p.error(f"unknown parts: {sorted(unknown)}")
    if args.json:
        OUT = sys.stderr
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
    needed = set(args.sizes) | ({TYPICAL, LARGE} if parts & {"http", "profile", "floor"} else set())
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

            results["floor"] = floor.bench_floor(args, tmp, sys.modules[__name__])
        if "profile" in parts:
            results["profile"] = bench_profile(args, tmp)
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
