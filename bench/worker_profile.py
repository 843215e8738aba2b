"""Where a real gunicorn worker spends its CPU: the service served by ``ketamine-cds serve``, sampled.

Started like ``bench/echo_serve.py`` (the real ``serve`` command, its worker class and settings),
with the app's WSGI callable wrapped so that each worker, from its first request on:

* samples its own Python stack on every millisecond of process CPU (``ITIMER_PROF``/``SIGPROF``:
  user + system time, whichever greenlet runs; time in C code — orjson, sqlite, the collector,
  system calls — is charged to the Python frame that called it). The handler runs on the main
  thread: right for the gevent worker (``serve``'s default: every greenlet runs there), wrong for
  ``gthread``, whose requests run on other threads;
* adds up the CPU spent in the cyclic garbage collector (``gc.callbacks``) and counts collections;

and writes ``<dir>/worker-<pid>.json`` every 200 requests and at exit. :func:`report` reads the
files of one run. Not for production: the sampler costs a few per cent. The kernel
delivers ``SIGPROF`` on its timer tick (often 4 ms), so a sample stands for one tick of CPU; the
shares are what to read. Run from the repository root
(``bench/bench.py --parts worker-profile`` does all of it, under the floor's load):

    KETAMINE_CDS_BENCH_PROFILE_DIR=/tmp/prof .venv/bin/python bench/worker_profile.py --dev --port 8098
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ENV = "KETAMINE_CDS_BENCH_PROFILE_DIR"
INTERVAL_S = 0.001
MAX_DEPTH = 60


class _Sampler:
    """Per-process state (created on the first request of a worker, after the fork)."""

    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir / f"worker-{os.getpid()}.json"
        self.stacks: Counter[tuple[str, ...]] = Counter()
        self.requests = 0
        self.gc_s = 0.0
        self.gc_runs: Counter[int] = Counter()
        self._gc_t0 = 0.0
        self.started_cpu = time.process_time()
        self._reset_stamp: int | None = None
        gc.callbacks.append(self._gc)
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, INTERVAL_S, INTERVAL_S)
        atexit.register(self.dump)

    def maybe_reset(self) -> None:
        """Start counting afresh when ``<dir>/reset`` is newer than the last reset (after a warm-up)."""
        try:
            stamp = (self.out.parent / "reset").stat().st_mtime_ns
        except OSError:
            return
        if stamp != self._reset_stamp:
            self._reset_stamp = stamp
            self.stacks.clear()
            self.gc_runs.clear()
            self.requests, self.gc_s, self.started_cpu = 0, 0.0, time.process_time()

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t0 = time.thread_time()
        else:
            self.gc_s += time.thread_time() - self._gc_t0
            self.gc_runs[info.get("generation", -1)] += 1

    def _sample(self, _signum: int, frame: Any) -> None:
        stack: list[str] = []
        while frame is not None and len(stack) < MAX_DEPTH:
            code = frame.f_code
            stack.append(f"{_short(code.co_filename)}:{code.co_name}")
            frame = frame.f_back
        self.stacks[tuple(reversed(stack))] += 1

    def dump(self) -> None:
        data = {
            "pid": os.getpid(),
            "requests": self.requests,
            "process_cpu_s": time.process_time() - self.started_cpu,
            "gc_s": self.gc_s,
            "gc_runs": {str(k): v for k, v in self.gc_runs.items()},
            "interval_s": INTERVAL_S,
            "stacks": [[list(k), v] for k, v in self.stacks.most_common()],
        }
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.out)


def _short(path: str) -> str:
    for marker, prefix in (("site-packages/", ""), ("/cds_service/", "cds_service/"), ("/lib/python3", "")):
        if marker in path:
            return prefix + path.split(marker, 1)[1]
    return path.rsplit("/", 1)[-1]


def profiled(app: Any, out_dir: Path) -> Any:
    inner = app.wsgi_app
    state: dict[int, _Sampler] = {}

    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        sampler = state.get(os.getpid())
        if sampler is None:
            sampler = state[os.getpid()] = _Sampler(out_dir)
        sampler.maybe_reset()
        try:
            return inner(environ, start_response)
        finally:
            sampler.requests += 1
            if sampler.requests % 200 == 0:
                sampler.dump()

    app.wsgi_app = wsgi
    return app


def report(out_dir: Path, top: int = 40) -> dict[str, Any]:
    """Totals over every worker file in ``out_dir``: per-request CPU split and the hottest functions."""
    stacks: Counter[tuple[str, ...]] = Counter()
    totals = Counter[str]()
    gc_runs = Counter[str]()
    for f in sorted(out_dir.glob("worker-*.json")):
        d = json.loads(f.read_text())
        for key in ("requests", "process_cpu_s", "gc_s"):
            totals[key] += d[key]
        gc_runs.update(d["gc_runs"])
        for stack, n in d["stacks"]:
            stacks[tuple(stack)] += n
    samples = sum(stacks.values()) or 1
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for stack, n in stacks.items():
        for fn in set(stack):
            inclusive[fn] += n
        own[stack[-1]] += n
    req = max(1, totals["requests"])
    return {
        "requests": totals["requests"],
        "process_cpu_ms_per_request": round(1000 * totals["process_cpu_s"] / req, 2),
        "gc_ms_per_request": round(1000 * totals["gc_s"] / req, 2),
        "gc_runs_per_request": {k: round(v / req, 3) for k, v in sorted(gc_runs.items())},
        "samples": samples,
        "inclusive": [(fn, round(100 * n / samples, 1)) for fn, n in inclusive.most_common(top)],
        "self": [(fn, round(100 * n / samples, 1)) for fn, n in own.most_common(top)],
    }


def bench_worker_profile(args: Any, tmp: Path) -> dict[str, Any]:
    """``bench.py --parts worker-profile``: the floor's load (order-sign, typical record, a new patient
    per call) against the sampled service for ``--duration`` seconds, then the report."""
    import records
    from common import TYPICAL, say
    from loadgen import run_load
    from server import Server, server_cpu

    out_dir = tmp / "worker-profile"
    server = Server(
        tmp,
        workers=args.workers,
        threads=args.threads,
        launcher=[sys.executable, str(Path(__file__).resolve())],
        env={ENV: str(out_dir)},
    )
    plan = [("/cds-services/order-sign", records.request_bytes(TYPICAL, "order-sign"))]
    try:
        server.wait_ready()
        run_load(server.port, plan, args.warm_seconds, connections=4, processes=2, vary="call")
        for f in out_dir.glob("worker-*.json"):
            f.unlink()
        (out_dir / "reset").write_text(str(time.time()))  # each worker drops the warm-up's samples
        cpu0 = server_cpu(server)
        r = run_load(server.port, plan, args.duration, args.connections, args.client_processes, vary="call")
        cpu_ms = 1000 * (server_cpu(server) - cpu0) / max(1, r["ok"])
    finally:
        server.stop()  # workers write their files at exit
    rep = report(out_dir, args.profile_top)
    rep["server_cpu_ms_per_request"] = round(cpu_ms, 2)
    rep["throughput_rps"] = r["throughput_rps"]
    say(
        f"\n== worker profile: order-sign, {TYPICAL} resources, new patient each call, "
        f"{args.connections} connections, {args.duration:g} s; gunicorn as `serve` runs it, sampled on "
        "process CPU =="
    )
    say(
        f"  {r['throughput_rps']:.1f} req/s (slower than unsampled), server {cpu_ms:.2f} ms CPU/request; "
        f"in the workers {rep['process_cpu_ms_per_request']:.2f} ms, of which cyclic GC "
        f"{rep['gc_ms_per_request']:.2f} ms (collections per request by generation: "
        f"{rep['gc_runs_per_request']}); {rep['samples']} samples"
    )
    for title, key in (("including callees", "inclusive"), ("own (C calls charged to the caller)", "self")):
        say(f"  % of samples, {title}:")
        for fn, pct in rep[key]:
            say(f"    {pct:5.1f}  {fn}")
    return rep


def main(argv: list[str]) -> None:
    import cds_service.app as app_module
    from cds_service.cli import main as cli

    out_dir = Path(os.environ[ENV])
    out_dir.mkdir(parents=True, exist_ok=True)
    real = app_module.create_app
    app_module.create_app = lambda *a, **k: profiled(real(*a, **k), out_dir)
    cli(["serve", *argv], prog_name="ketamine-cds")


if __name__ == "__main__":
    main(sys.argv[1:])
