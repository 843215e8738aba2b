"""Instructions per call of each piece of the request path around the pipeline, counted by callgrind
(prints numbers; not a test).

``instructions.py --mode stub`` counts the whole path around the pipeline in one figure; this splits
it: each piece (the body parse, the depth check, the request schema, the call log line, the shown
cards, the JSON response, the pipeline's own glue …) runs ``--calls`` times on the typical
order-sign (200 resources, a new patient each time) under ``valgrind --tool=callgrind
--instr-atstart=no``, counting only its loop (``callgrind_control -i on/off`` and a dump per piece).
What the pieces do not cover (Flask's dispatch, werkzeug's request and response) is the stub's
count minus their sum. Run from the repository root:

    .venv/bin/python bench/request_parts.py --calls 20 [--code DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _pieces(calls: int) -> list[tuple[str, Callable[[int], Any]]]:
    import orjson
    import records
    from common import TYPICAL, new_patient_body
    from inproc import make_app

    from cds_service import api, gc_policy, logs, pipeline
    from cds_service.cards import render_cards
    from cds_service.engine.evaluate import evaluate
    from cds_service.engine.med_windows import medication_horizon
    from cds_service.engine.windows import fetch_narrowing
    from cds_service.reading.facts import Facts
    from cds_service.reading.medications import fetch_missing
    from cds_service.reading.prefetch import resolve_prefetch
    from cds_service.reading.record import PatientRecord
    from cds_service.services import SERVICES
    from cds_service.validation import MAX_DEPTH, depth_exceeds, validate_request

    body = records.request_bytes(TYPICAL, "order-sign")
    bodies = [new_patient_body(body) for _ in range(calls + 1)]  # the last one warms each piece up
    app = make_app(Path(tempfile.mkdtemp()) / "parts.sqlite3")
    state = app.extensions["ketamine_cds"]
    ruleset = state.rules.get()
    service = SERVICES["order-sign"]
    parsed = [orjson.loads(b) for b in bodies]
    for_run = [orjson.loads(b) for b in bodies]
    for_parts = [orjson.loads(b) for b in bodies]
    prefetched: list[Any] = [None] * (calls + 1)
    records_: list[Any] = [None] * (calls + 1)
    evaluations: list[Any] = [None] * (calls + 1)
    outcome = pipeline.run(parsed[0], ruleset, state.settings)
    cards = outcome.response["cards"]
    responses = [orjson.loads(orjson.dumps(outcome.response)) for _ in range(calls + 1)]
    ctx = app.test_request_context("/cds-services/order-sign", method="POST")
    ctx.push()

    def parse(i: int) -> Any:
        return orjson.loads(bodies[i])

    def depth(i: int) -> Any:
        return depth_exceeds(parsed[i], MAX_DEPTH)

    def validate(i: int) -> Any:
        return validate_request(parsed[i], service)

    def hash_patient(i: int) -> Any:
        return logs.hash_id(parsed[i]["context"]["patientId"])

    def shown(i: int) -> Any:
        state.store.record_shown(
            "order-sign",
            parsed[i]["hookInstance"],
            [(c["uuid"], c["source"]["topic"]["code"], c["indicator"]) for c in responses[i]["cards"]],
        )

    def log_line(i: int) -> Any:
        ev = outcome.evaluation
        logs.log_call(
            service="order-sign",
            hookInstance=parsed[i]["hookInstance"],
            request_id="r",
            patient="p",
            status=200,
            duration_ms=1.0,
            rules_fired=[o.rule.id for o in ev.fired],
            cards=len(cards),
            fhir_fetches=outcome.prefetch.stats.requests,
            prefetch={k: v for k, v in outcome.prefetch.origin.items() if v != "prefetched"},
            resources=ev.facts.record.size,
            skipped_resources=len(ev.facts.record.problems),
            ignored_elements=ev.facts.record.ignored_counts(),
            rules_version=ruleset.version,
        )

    def respond(i: int) -> Any:
        return app.json.response(responses[i])

    def paused(i: int) -> Any:
        with gc_policy.paused():
            pass

    def start_hook(i: int) -> Any:
        api._start()
        return api._finish(app.response_class(b""))

    def card_uuid(i: int) -> Any:
        return [str(uuid.uuid4()) for _ in cards]

    def run(i: int) -> Any:
        return pipeline.run(for_run[i], ruleset, state.settings, request_id="r")

    def resolve(i: int) -> Any:
        request = for_parts[i]
        now = pipeline.evaluation_time(request, True)
        prefetched[i] = resolve_prefetch(
            request,
            deadline_seconds=1.0,
            templates=pipeline.templates_for(ruleset),
            narrowing=pipeline.LazyNarrowing(lambda: fetch_narrowing(ruleset, now)),
        )

    def record(i: int) -> Any:
        records_[i] = PatientRecord.from_prefetch(prefetched[i].resources, for_parts[i]["context"])

    def facts_evaluate(i: int) -> Any:
        request = for_parts[i]
        now = pipeline.evaluation_time(request, True)
        horizon = medication_horizon(ruleset)
        facts = Facts(
            records_[i], ruleset.terminology, ruleset.observation_kinds, now, request["hook"], horizon
        )
        evaluations[i] = evaluate(ruleset, facts)

    def cards_(i: int) -> Any:
        return render_cards(evaluations[i], for_parts[i]["context"].get("patientId"))

    def glue_missing(i: int) -> Any:
        return fetch_missing(records_[i], for_parts[i], deadline_seconds=1.0, policy=None)

    def glue_small(i: int) -> Any:
        pipeline.evaluation_time(for_parts[i], state.settings.allow_time_override)
        pipeline.fetch_policy(state.settings, None)
        return records_[i].ignored_report()

    def facts_only(i: int) -> Any:
        request = for_parts[i]
        now = pipeline.evaluation_time(request, True)
        return Facts(records_[i], ruleset.terminology, ruleset.observation_kinds, now, request["hook"])

    def free(i: int) -> Any:
        parsed[i] = None  # the parsed body, freed by reference counting as the call's end does

    return [
        ("parse (orjson.loads; the echo too)", parse),
        ("depth check", depth),
        ("validate_request", validate),
        ("hash_id", hash_patient),
        ("shown cards (record_shown)", shown),
        ("call log line", log_line),
        ("JSON response", respond),
        ("gc_policy.paused", paused),
        ("before/after-request hooks", start_hook),
        ("uuid4 per card (the stub's stand-in)", card_uuid),
        ("pipeline.run whole", run),
        ("  resolve_prefetch (RD)", resolve),
        ("  from_prefetch (RD)", record),
        ("  Facts + evaluate (EN, OB...)", facts_evaluate),
        ("  render_cards (EN)", cards_),
        ("  glue: fetch_missing with nothing to fetch (MD)", glue_missing),
        ("  glue: evaluation_time, fetch_policy, ignored_report", glue_small),
        ("  Facts() alone (OB)", facts_only),
        ("free the body (the echo too)", free),
    ]


def _callgrind(*command: str) -> None:
    """``callgrind_control COMMAND <this pid>``, started with as little Python around it as possible
    (what runs between the toggles is counted: an empty piece measures it, and is subtracted)."""
    pid = os.posix_spawnp(
        "callgrind_control",
        ["callgrind_control", *command, str(os.getpid())],
        os.environ,
        file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)],
    )
    os.waitpid(pid, 0)


def child(calls: int) -> None:
    pieces = [("(empty: the toggles themselves)", lambda i: None), *_pieces(calls)]
    for label, fn in pieces:
        fn(calls)  # warm-up (compiled schemas, caches), not counted
        gc.collect()
        gc.disable()  # as in a call (gc_policy); no collection is counted against a piece
        _callgrind("-i", "on")
        for i in range(calls):
            fn(i)
        _callgrind("-i", "off")
        _callgrind("-d", re.sub(r"\W+", "_", label))
        gc.enable()
    print("LABELS", "|".join(label for label, _ in pieces))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--code", type=Path, help="count another checkout's cds_service")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    code = (args.code or HERE.parent).resolve()
    if args.child:
        sys.path[:0] = [str(code / "bench"), str(code)]
        child(args.calls)
        return
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind not found (apt-get install valgrind)")
    out_dir = Path(tempfile.mkdtemp())
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/callgrind.out",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--calls",
        str(args.calls),
        "--code",
        str(code),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=code)
    labels = re.search(r"LABELS (.*)", run.stdout)
    if run.returncode != 0 or not labels:
        raise SystemExit(f"valgrind run failed ({run.returncode}):\n{run.stderr[-3000:]}")
    totals = []
    for f in sorted(out_dir.glob("callgrind.out.*"), key=lambda f: int(f.name.rsplit(".", 1)[-1])):
        m = re.search(r"^totals:\s*(\d+)", f.read_text(errors="replace"), re.M)
        totals.append(int(m.group(1)) if m else 0)
    names = labels.group(1).split("|")
    if len(totals) != len(names):
        raise SystemExit(f"{len(totals)} dumps for {len(names)} pieces in {out_dir}")
    base = totals[0]
    toggles = base / args.calls / 1e3
    print(f"instructions per call, {args.calls} calls, less the toggles' own {toggles:.0f} k, {code}")
    for label, total in zip(names[1:], totals[1:], strict=True):
        print(f"  {(total - base) / args.calls / 1e3:9.0f} k  {label}")


if __name__ == "__main__":
    main()
