"""Instructions per call, counted by valgrind's callgrind: a before/after figure that other load on
the machine cannot move (prints numbers; not a test).

On the shared 2-CPU machine, CPU milliseconds of one call vary ±30 % from minute to minute with what
else runs; the count of instructions a call executes does not. This runs N order-sign calls (200
resources, a new patient each) through the WSGI app exactly as gunicorn calls it (no test client)
under ``valgrind --tool=callgrind``, counting only the calls (not start-up), in one of three modes:

* ``full``  the service;
* ``stub``  the service with ``pipeline.run`` replaced by a canned outcome (made before counting):
            everything around the pipeline (body read, depth check, parse, request schema, shown
            cards, call log, JSON response, Flask, freeing the body);
* ``echo``  the echo floor's app (``bench/echo_serve.py``).

Instructions are not time (a byte loop runs ~4 per cycle, Python bytecode ~1-2), so compare counts of
the same mode between two checkouts (``--code DIR``: that checkout's ``cds_service`` and bench
helpers), not across
modes. Needs ``valgrind`` (apt). About a minute per mode. Run from the repository root:

    .venv/bin/python bench/instructions.py --mode stub --calls 20
    .venv/bin/python bench/instructions.py --mode full --code /tmp/main-checkout --top 25
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _environ(body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/cds-services/order-sign",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "127.0.0.1:8000",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def _app(mode: str, tmp: Path, body: bytes, calls: int) -> Any:
    if mode == "echo":
        from echo_serve import echo_app

        return echo_app()
    import orjson
    from inproc import make_app

    from cds_service import pipeline

    app = make_app(tmp / "instructions.sqlite3")
    if mode == "stub":
        state = app.extensions["ketamine_cds"]
        real = pipeline.run(orjson.loads(body), state.rules.get(), state.settings)
        canned = orjson.dumps(real.response)
        # The stand-in's own work (a fresh copy of the response, a uuid per card, as render_cards
        # makes them) is done before counting: it stands for the pipeline, which the stub leaves out.
        responses = []
        for _ in range(calls):
            response = orjson.loads(canned)
            for card in response["cards"]:
                card["uuid"] = str(uuid.uuid4())
            responses.append(response)

        def stub(*_args: Any, **_kwargs: Any) -> Any:
            return pipeline.Outcome(responses.pop(), real.evaluation, real.prefetch)

        pipeline.run = stub  # type: ignore[assignment]
    return app


def child(mode: str, calls: int) -> None:
    """Under valgrind: build the app, warm it, then count ``calls`` calls only."""
    import records
    from common import TYPICAL, new_patient_body

    body = records.request_bytes(TYPICAL, "order-sign")
    bodies = [new_patient_body(body) for _ in range(calls + 3)]
    app = _app(mode, Path(tempfile.mkdtemp()), body, len(bodies))

    def start_response(status: str, _headers: Any, _exc_info: Any = None) -> None:
        if not status.startswith("200"):
            raise SystemExit(f"HTTP {status}")

    def post(environ: dict[str, Any]) -> None:
        out = app(environ, start_response)
        for _ in out:
            pass
        getattr(out, "close", lambda: None)()

    for b in bodies[:3]:
        post(_environ(b))
    environs = [_environ(b) for b in bodies[3:]]
    gc.collect()
    toggle = ["callgrind_control", "-i"]
    subprocess.run([*toggle, "on", str(os.getpid())], check=True, capture_output=True)
    for environ in environs:
        post(environ)
    subprocess.run([*toggle, "off", str(os.getpid())], check=True, capture_output=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["full", "stub", "echo"], default="stub")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--code", type=Path, help="count another checkout's cds_service (before/after)")
    p.add_argument("--top", type=int, default=0, help="also list the N costliest C functions (self)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    code = (args.code or HERE.parent).resolve()
    if args.child:  # that checkout's own bench helpers (records, common, inproc, echo_serve) and package
        sys.path[:0] = [str(code / "bench"), str(code)]
        child(args.mode, args.calls)
        import cds_service

        if not Path(cds_service.__file__).resolve().is_relative_to(code):
            raise SystemExit(f"counted {cds_service.__file__}, not {code}")
        return
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind not found (apt-get install valgrind)")
    out_file = Path(tempfile.mkdtemp()) / "callgrind.out"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--mode",
        args.mode,
        "--calls",
        str(args.calls),
        "--code",
        str(code),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=code)
    collected = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or not collected:
        raise SystemExit(f"valgrind run failed ({run.returncode}):\n{run.stderr[-3000:]}")
    per_call = int(collected.group(1)) / args.calls
    print(f"{args.mode}: {per_call / 1e6:.2f} M instructions per call ({args.calls} calls, {code})")
    if args.top:
        annotated = subprocess.run(
            ["callgrind_annotate", str(out_file)], capture_output=True, text=True, check=True
        ).stdout
        rows = annotated.split("file:function", 1)[-1].splitlines()[2 : 2 + args.top]
        for row in rows:
            m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S+)(?:\s+\[(.*)\])?", row)
            if m:
                count, where, lib = m.groups()
                name = where.rsplit("/", 1)[-1]
                if name.startswith("???") and lib:  # no symbols (orjson): name the library
                    name = f"{name} in {lib.rsplit('/', 1)[-1]}"
                print(f"  {int(count.replace(',', '')) / args.calls / 1e3:9.0f} k  {name}")


if __name__ == "__main__":
    main()
