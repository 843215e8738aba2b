"""The load generator: keep-alive ``http.client`` connections in several processes × threads."""

from __future__ import annotations

import http.client
import math
import multiprocessing as mp
import os
import select
import threading
import time
import uuid
from collections import Counter
from typing import Any

import records  # noqa: E402
from common import HOOKS, new_patient_body, summarize  # noqa: E402
from server import Server  # noqa: E402


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
