"""Card snapshot: every response the service gives to the project's own requests, to compare code.

A speed change must not change a card. This runs, through ``pipeline.run`` (the same call the HTTP
endpoint makes), every rule-test case (``rules/tests/*.yaml``, with its site overrides), every
``fhir_examples/*.json`` (each order example again as patient-view), every request captured from
the CDS Hooks Sandbox (``tests/fixtures/sandbox/``) and the benchmark records (bench/records.py)
at a few sizes and seeds for each hook. It keeps the full response (card uuids blanked: they are
random) and the ``explain`` text with skipped rules (every rule's status, reason and evidence).
The rules' version hash is not compared (an edit of a rule file changes it in every response).
``--write`` stores the snapshot; ``--compare`` runs again and prints each difference, exit status
1 if there is one.

    .venv/bin/python bench/golden.py --write /tmp/golden-main.json      # on main's code
    .venv/bin/python bench/golden.py --compare /tmp/golden-main.json    # on yours

Not a test: the rule tests assert what a card must say; this asserts that nothing else moved.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import records  # noqa: E402

from cds_service import pipeline  # noqa: E402
from cds_service.cli import explain_text  # noqa: E402
from cds_service.config import Settings  # noqa: E402
from cds_service.errors import ApiError, DataUnavailable  # noqa: E402
from cds_service.rule_tests import RuleSets, default_case_files, load_case_file, run_case  # noqa: E402
from cds_service.services import SERVICES  # noqa: E402
from cds_service.validation import validate_request  # noqa: E402

RULES = ROOT / "rules"
EXAMPLES = ROOT / "fhir_examples"
SANDBOX = ROOT / "tests" / "fixtures" / "sandbox"
SANDBOX_TIME = "2026-12-01T12:48:00Z"  # the capture's time (tests/test_sandbox_captured.py)
TIME_EXTENSION = "ketamine-cds.evaluation-time"
BENCH_SIZES = (200, 1000)
BENCH_SEEDS = (0, 1)


def _blank_uuids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("-" if k == "uuid" else _blank_uuids(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank_uuids(v) for v in value]
    return value


def _entry(outcome: Any) -> dict[str, Any]:
    return {
        "response": _blank_uuids(outcome.response),
        "explain": explain_text(outcome, show_all=True).splitlines(),
    }


def _run_request(request: dict[str, Any], rulesets: RuleSets) -> dict[str, Any]:
    settings = Settings(rules_dir=RULES, allow_time_override=True)
    try:
        valid = validate_request(request, SERVICES[request["hook"]])
        return _entry(pipeline.run(valid, rulesets.get({}), settings))
    except (ApiError, DataUnavailable) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def snapshot(*, quick: bool = False) -> dict[str, dict[str, Any]]:
    """id → entry, in a fixed order."""
    rulesets = RuleSets(RULES)
    out: dict[str, dict[str, Any]] = {}
    for path in default_case_files(RULES):
        for case, line in load_case_file(path):
            result = run_case(case, rulesets, file=str(path), line=line)
            key = f"rules/tests/{path.name}:{case.get('id', line)}"
            out[key] = _entry(result.outcome) if result.outcome else {"error": result.failures}
    for path in sorted(EXAMPLES.glob("*.json")):
        request = json.loads(path.read_text())
        out[f"fhir_examples/{path.name}"] = _run_request(request, rulesets)
        if request["hook"] != "patient-view":  # the same patient opened, no order drafted
            request["hook"] = "patient-view"
            request["context"].pop("draftOrders", None)
            request["context"].pop("selections", None)
            out[f"fhir_examples/{path.name}#patient-view"] = _run_request(request, rulesets)
    for path in sorted(SANDBOX.glob("*.json")):
        request = json.loads(path.read_text())
        if "hook" not in request:  # a feedback body, not a hook call
            continue
        request["extension"] = {TIME_EXTENSION: SANDBOX_TIME}
        out[f"sandbox/{path.name}"] = _run_request(request, rulesets)
    sizes = BENCH_SIZES[:1] if quick else BENCH_SIZES
    for size in sizes:
        for hook in records.HOOKS:
            for seed in BENCH_SEEDS:
                request = records.build_request(size, hook, seed)
                out[f"bench/{hook}/{size}/seed{seed}"] = _run_request(request, rulesets)
    return out


#: A hash of the rule files: any edit of rules/ changes it in every response, so it is not compared.
RULES_VERSION = "ketamine-cds.rules-version"


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "(not compared)" if k == RULES_VERSION else _comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _lines(entry: dict[str, Any]) -> list[str]:
    return json.dumps(_comparable(entry), indent=1, ensure_ascii=False).splitlines()


def compare(old: dict[str, Any], new: dict[str, Any], *, context: int = 2, limit: int = 40) -> int:
    """Prints the differences; returns how many entries differ (added/removed ids count)."""
    differing = 0
    for key in list(dict.fromkeys([*old, *new])):
        if key not in new or key not in old:
            differing += 1
            print(f"== {key}: only in the {'stored' if key in old else 'new'} snapshot")
            continue
        a, b = _lines(old[key]), _lines(new[key])
        if a == b:
            continue
        differing += 1
        print(f"== {key}")
        diff = list(difflib.unified_diff(a, b, "stored", "new", n=context, lineterm=""))
        more = f"\n   … {len(diff) - limit} more lines" if len(diff) > limit else ""
        print("\n".join(diff[:limit]) + more)
    return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, metavar="FILE", help="store the snapshot in FILE")
    group.add_argument("--compare", type=Path, metavar="FILE", help="compare with a stored snapshot")
    parser.add_argument("--quick", action="store_true", help="bench records at 200 resources only")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    snap = snapshot(quick=args.quick)
    took = time.perf_counter() - t0
    if args.write:
        args.write.write_text(json.dumps(snap, ensure_ascii=False))
        print(f"wrote {len(snap)} responses to {args.write} in {took:.1f} s")
        return 0
    stored = json.loads(args.compare.read_text())
    if args.quick:
        stored = {k: v for k, v in stored.items() if not k.startswith("bench/") or "/200/" in k}
    n = compare(stored, snap)
    print(f"{len(snap)} responses in {took:.1f} s: " + (f"{n} differ" if n else "all identical"))
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
