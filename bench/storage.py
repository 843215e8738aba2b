"""Throughput and latency of the storage backends (prints numbers; not a test).

For SQLite (a temp file) and PostgreSQL (``--postgres URL``, else a throwaway server started like the
test suite's: tests/support/postgres.py), through the same ``open_storage`` the service uses:

* ``feedback``  ``add_feedback`` of one entry (committed durably before it returns, as a POST does)
* ``shown``     ``record_shown`` of three cards (what every service call does: buffered, written
                with other calls' rows in one transaction every half second, storage/shown_buffer.py)
* ``shown+flush`` the same written at once (one transaction per call, as before the buffer)
* ``jti``       ``jti_cache.add`` (what every authenticated call does)

each one call at a time and from ``--threads`` threads at once (gunicorn's threads in one worker;
SQLite serialises writers per file, PostgreSQL does not). Run from the repository root:

    .venv/bin/python bench/storage.py                  # ≈ 30 s
    .venv/bin/python bench/storage.py --seconds 5 --threads 8 --postgres postgresql://u:p@db/cds
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_service.storage import open_storage  # noqa: E402


def _operations(storage) -> dict[str, Callable[[], None]]:  # noqa: ANN001 - a Storage
    def feedback() -> None:
        entry = {
            "card": str(uuid.uuid4()),
            "outcome": "overridden",
            "outcomeTimestamp": "2026-05-04T10:00:00Z",
            "overrideReason": {"reason": {"code": "r", "display": "benefit outweighs risk"}},
        }
        storage.feedback.add_feedback("order-sign", [entry])

    def shown() -> None:
        storage.feedback.record_shown(
            "order-sign", str(uuid.uuid4()), [(str(uuid.uuid4()), f"rule-{i}", "warning") for i in range(3)]
        )

    def shown_flushed() -> None:
        shown()
        storage.feedback.shown.flush()

    def jti() -> None:
        storage.jti_cache.add("https://ehr.test", str(uuid.uuid4()), time.time() + 300)

    return {"feedback": feedback, "shown": shown, "shown+flush": shown_flushed, "jti": jti}


def _run(op: Callable[[], None], threads: int, seconds: float) -> tuple[float, float, float]:
    """(operations per second, p50 ms, p99 ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    end = time.perf_counter() + seconds

    def loop() -> None:
        mine = []
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            op()
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p99 * 1000


@contextlib.contextmanager
def _postgres(url: str | None) -> Iterator[tuple[str, float | None]]:
    if url:
        yield url, None
        return
    from tests.support.postgres import running_postgres

    with running_postgres() as server:
        yield server.create_database("bench"), server.started_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.5, help="per cell")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--postgres", help="a PostgreSQL URL to use instead of a throwaway server")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, _postgres(args.postgres) as (pg_url, pg_start):
        if pg_start is not None:
            print(f"throwaway PostgreSQL server: initdb + start in {pg_start:.2f} s")
        print(f"{'backend':11} {'operation':9} {'threads':>7} {'ops/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
        for backend, url in (("sqlite", str(Path(tmp) / "bench.sqlite3")), ("postgresql", pg_url)):
            storage = open_storage(url)
            for name, op in _operations(storage).items():
                for threads in (1, args.threads):
                    rate, p50, p99 = _run(op, threads, args.seconds)
                    print(
                        f"{backend:11} {name:9} {threads:>7} {rate:>8.0f} {p50:>7.2f} {p99:>7.2f}", flush=True
                    )
            storage.close()


if __name__ == "__main__":
    main()
