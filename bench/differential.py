"""Differential test of two checkouts: thousands of EHR-shaped variants of the project's own requests
run through each checkout's ``pipeline.run``; every difference printed, grouped by kind.

A speed change must change no answer; a safety change must change exactly what it says. The seed
requests are the project's own: every rule-test case (``rules/tests/*.yaml``, with its site
overrides), ``fhir_examples/*.json``, the Sandbox captures (``tests/fixtures/sandbox/``) and a few
benchmark records (bench/records.py). Each variant applies 1–3 mutations of bench/mutations.py
(statuses, units, dates moved into and out of windows, periods for dates, references for inline
codes, contained Medications, arrays ↔ single objects, missing/invalid elements, unknown keys,
stopped/completed medications, preliminary observations, resources of another request, records of
windowed drugs ending on either side of the medication horizon's cutoff with one defect …),
deterministic by ``--seed``. Each side runs in its own subprocess with its own ``PYTHONPATH`` (and
its own rules/), so the two never share a module:

    git -C /work/main archive feefe0a | (mkdir -p /tmp/base-feefe0a && tar -x -C /tmp/base-feefe0a)
    .venv/bin/python bench/differential.py --base /tmp/base-feefe0a --code /work/wt-mh --variants 3000
    .venv/bin/python bench/differential.py --base . --code . --code-env KETAMINE_CDS_PURE_PYTHON=1

Compared per request: an error (status and message) or a crash (any other exception: a 500), the
cards (topic:indicator in order), each card's summary, detail, source, suggestions and its
explanation (rule statuses, reasons, facts), the data gaps (every rule left unknown, with its
reason), the ignored-elements report, every rule's status and reason, and anything else in the
response. Card uuids and the rules' version hash are not compared. Exit status 1 on a difference.
``--save DIR`` writes each differing request (and both answers) as JSON to replay by hand.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIME_EXTENSION = "ketamine-cds.evaluation-time"
SANDBOX_TIME = "2026-12-01T12:48:00Z"  # bench/golden.py's (the capture's time)
RULES_VERSION = "ketamine-cds.rules-version"
PURE_ENV = "KETAMINE_CDS_PURE_PYTHON"  # CY's switch: every module as its .py
KINDS = (
    "crash",
    "error",
    "cards",
    "summary",
    "detail",
    "source",
    "suggestions",
    "explanation",
    "data-gaps",
    "ignored",
    "rule-status",
    "rule-reason",
    "response-other",
)


# -- seeds (built with this checkout's compact builder and records) ------------------------------


def seed_requests(root: Path, bench_sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Items {id, request, site}: the project's own requests, in a fixed order."""
    sys.path[:0] = [str(root), str(root / "bench")]
    import records  # noqa: PLC0415

    from cds_service.compact import build_request  # noqa: PLC0415
    from cds_service.rule_tests import default_case_files, load_case_file, splice  # noqa: PLC0415

    items: list[dict[str, Any]] = []
    for path in default_case_files(root / "rules"):
        for case, line in load_case_file(path):
            case = splice(case)
            try:
                built = build_request({k: v for k, v in case.items() if k != "inject"})
            except Exception:  # noqa: BLE001 — a case the builder rejects is no seed
                continue
            for key, extra in (case.get("inject") or {}).items():
                built["prefetch"][key].setdefault("entry", []).extend({"resource": r} for r in extra)
            site = case.get("site") or {}
            # through JSON: the builder shares one dict between records (a mutation must change one)
            items.append(
                {
                    "id": f"rules/{path.stem}:{case.get('id', line)}",
                    "request": json.loads(json.dumps(built)),
                    "site": {k: site[k] for k in ("rules", "params", "jurisdiction") if k in site},
                }
            )
    for path in sorted((root / "fhir_examples").glob("*.json")):
        request = json.loads(path.read_text())
        items.append({"id": f"examples/{path.stem}", "request": request, "site": {}})
        if request["hook"] != "patient-view":
            view = copy.deepcopy(request)
            view["hook"] = "patient-view"
            view["context"].pop("draftOrders", None)
            view["context"].pop("selections", None)
            items.append({"id": f"examples/{path.stem}#patient-view", "request": view, "site": {}})
    for path in sorted((root / "tests" / "fixtures" / "sandbox").glob("*.json")):
        request = json.loads(path.read_text())
        if "hook" in request:
            request["extension"] = {TIME_EXTENSION: SANDBOX_TIME}
            items.append({"id": f"sandbox/{path.stem}", "request": request, "site": {}})
    for size in bench_sizes:
        for hook in records.HOOKS:
            items.append(
                {"id": f"bench/{hook}/{size}", "request": records.build_request(size, hook, 0), "site": {}}
            )
    return items


def variants(
    seeds: list[dict[str, Any]], count: int, seed: int, only: list[str] | None, max_resources: int
) -> list[dict[str, Any]]:
    """The seeds themselves, then ``count`` mutated copies (seed picked at random, 1–3 mutations)."""
    from mutations import Pool, mutate, resources  # noqa: PLC0415

    pool = Pool()
    for item in seeds:
        pool.add(item["request"])
    small = [s for s in seeds if len(resources(s["request"])) <= max_resources] or seeds
    out = [dict(item, mutations=[]) for item in seeds]
    for i in range(count):
        rng = random.Random(f"{seed}:{i}")
        base = rng.choice(small)
        request = copy.deepcopy(base["request"])
        labels = mutate(rng, request, pool, rng.choice([1, 1, 2, 2, 3]), only)
        if labels:
            out.append(
                {"id": f"{base['id']}~{i}", "request": request, "site": base["site"], "mutations": labels}
            )
    return out


# -- one side (a subprocess with the checkout's PYTHONPATH) ----------------------------------------


def _blank(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: ("-" if k == "uuid" else "(rules)" if k == RULES_VERSION else _blank(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_blank(v) for v in value]
    return value


def answer(item: dict[str, Any], rulesets: Any, settings_for: Any) -> dict[str, Any]:
    """What the checkout answers, in the compared parts."""
    from cds_service import pipeline  # noqa: PLC0415
    from cds_service.errors import ApiError, DataUnavailable  # noqa: PLC0415
    from cds_service.services import SERVICES  # noqa: PLC0415
    from cds_service.validation import validate_request  # noqa: PLC0415

    site = item.get("site") or {}
    try:
        ruleset = rulesets.get(site)
        request = validate_request(item["request"], SERVICES[item["request"]["hook"]])
        outcome = pipeline.run(
            request, ruleset, settings_for(rulesets.rules_dir), jurisdiction=site.get("jurisdiction")
        )
    except (ApiError, DataUnavailable) as exc:
        return {"error": f"{type(exc).__name__} {getattr(exc, 'status', '')}: {exc}"}
    except Exception as exc:  # noqa: BLE001 — a crash is a finding, the run goes on
        return {"crash": f"{type(exc).__name__}: {str(exc)[:300]}"}
    response = _blank(outcome.response)
    cards = []
    for card in response.get("cards") or []:
        ext = dict(card.get("extension") or {})
        explanation = ext.pop("ketamine-cds.explanation", None)
        cards.append(
            {
                "topic": ((card.get("source") or {}).get("topic") or {}).get("code"),
                "indicator": card.get("indicator"),
                "summary": card.get("summary"),
                "detail": card.get("detail"),
                "source": card.get("source"),
                "suggestions": card.get("suggestions"),
                "explanation": explanation,
                "other": {
                    k: v
                    for k, v in card.items()
                    if k
                    not in ("summary", "indicator", "detail", "source", "suggestions", "extension", "uuid")
                }
                | {"ext": ext},
            }
        )
    outcomes = outcome.evaluation.outcomes
    return {
        "cards": cards,
        "gaps": sorted(f"{o.rule.id}: {o.reason}" for o in outcomes if o.status == "unknown"),
        "ignored": (response.get("extension") or {}).get("ketamine-cds.ignored-elements"),
        "rules": {o.rule.id: [o.status, str(o.reason)] for o in outcomes},
        "other": {k: v for k, v in response.items() if k not in ("cards", "extension")}
        | {
            "ext": {
                k: v
                for k, v in (response.get("extension") or {}).items()
                if k != "ketamine-cds.ignored-elements"
            }
        },
    }


def worker(items_path: Path, out_path: Path) -> int:
    import cds_service  # noqa: PLC0415
    from cds_service.config import Settings  # noqa: PLC0415
    from cds_service.rule_tests import RuleSets  # noqa: PLC0415

    code = Path(cds_service.__file__).resolve().parent.parent
    rulesets = RuleSets(code / "rules")
    settings: dict[Path, Any] = {}

    def settings_for(rules_dir: Path) -> Any:
        if rules_dir not in settings:
            settings[rules_dir] = Settings(rules_dir=rules_dir, allow_time_override=True)
        return settings[rules_dir]

    with items_path.open() as src:
        answers = [
            json.dumps({"id": item["id"], "answer": answer(item, rulesets, settings_for)})
            for item in map(json.loads, src)
        ]
    # which of the checkout's modules ran compiled (an extension module, not its .py)
    compiled = sorted(
        name
        for name, module in list(sys.modules.items())
        if name.startswith("cds_service") and str(getattr(module, "__file__", "")).endswith((".so", ".pyd"))
    )
    head = {"code": str(code), "compiled modules": len(compiled), "pure env": os.environ.get(PURE_ENV, "")}
    out_path.write_text("\n".join([json.dumps(head), *answers]) + "\n")
    return 0


def run_side(
    name: str, code: Path, env_pairs: list[str], items_path: Path, python: str
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code.resolve())
    for pair in env_pairs:
        key, _, value = pair.partition("=")
        env[key] = value
    out = items_path.with_suffix(f".{name}.out")
    proc = subprocess.Popen(
        [python, str(Path(__file__).resolve()), "--worker", str(items_path), str(out)], env=env, cwd=str(code)
    )
    proc.out_path = out  # type: ignore[attr-defined]
    return proc


def read_side(proc: subprocess.Popen[bytes]) -> tuple[dict[str, Any], dict[str, Any]]:
    lines = Path(proc.out_path).read_text().splitlines()  # type: ignore[attr-defined]
    head = json.loads(lines[0])
    return head, {r["id"]: r["answer"] for r in map(json.loads, lines[1:])}


# -- comparing -------------------------------------------------------------------------------------


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(kind, where, base, code) for each difference of two answers."""
    out: list[tuple[str, str, Any, Any]] = []
    for kind in ("crash", "error"):
        if a.get(kind) != b.get(kind):
            out.append((kind, "", a.get(kind), b.get(kind)))
    if out or "cards" not in a:
        return out
    ca, cb = a["cards"], b["cards"]
    la = [f"{c['topic']}:{c['indicator']}" for c in ca]
    lb = [f"{c['topic']}:{c['indicator']}" for c in cb]
    if la != lb:
        out.append(("cards", "", la, lb))
    by_a = {c["topic"]: c for c in ca}
    by_b = {c["topic"]: c for c in cb}
    for topic in [t for t in by_a if t in by_b]:
        for part in ("summary", "detail", "source", "suggestions", "explanation"):
            if by_a[topic][part] != by_b[topic][part]:
                out.append((part, topic, by_a[topic][part], by_b[topic][part]))
        if by_a[topic]["other"] != by_b[topic]["other"]:
            out.append(("response-other", topic, by_a[topic]["other"], by_b[topic]["other"]))
    if a["gaps"] != b["gaps"]:
        out.append(
            (
                "data-gaps",
                "",
                sorted(set(a["gaps"]) - set(b["gaps"])),
                sorted(set(b["gaps"]) - set(a["gaps"])),
            )
        )
    if a["ignored"] != b["ignored"]:
        out.append(("ignored", "", a["ignored"], b["ignored"]))
    ra, rb = a["rules"], b["rules"]
    for rid in dict.fromkeys([*ra, *rb]):
        x, y = ra.get(rid), rb.get(rid)
        if x == y:
            continue
        if x is None or y is None or x[0] != y[0]:
            out.append(("rule-status", rid, x, y))
        else:
            out.append(("rule-reason", rid, x[1], y[1]))
    if a["other"] != b["other"]:
        out.append(("response-other", "", a["other"], b["other"]))
    return out


def _short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def report(
    found: dict[str, list[tuple[str, str, Any, Any]]], items: dict[str, dict[str, Any]], show: int, width: int
) -> None:
    by_kind: dict[str, list[tuple[str, str, Any, Any]]] = defaultdict(list)
    for rid, diffs in found.items():
        for kind, where, x, y in diffs:
            by_kind[kind].append((rid, where, x, y))
    for kind in KINDS:
        rows = by_kind.get(kind)
        if not rows:
            continue
        reqs = {r for r, *_ in rows}
        mutation_kinds = Counter(m.split(":")[0] for r in reqs for m in items[r]["mutations"] or ["(seed)"])
        print(
            f"\n=== {kind}: {len(rows)} differences in {len(reqs)} requests; mutations "
            + ", ".join(f"{m} {n}" for m, n in mutation_kinds.most_common(8))
        )
        windowed = Counter(
            ":".join(m.split(":")[3:])
            for r in reqs
            for m in items[r]["mutations"]
            if m.startswith("windowed:")
        )
        if windowed:  # bench/mutation_windowed.py: where the record ends, its defect
            print("    windowed: " + ", ".join(f"{m} {n}" for m, n in windowed.most_common(12)))
        wheres = Counter(w for _, w, _, _ in rows if w)
        if wheres:
            print("    where: " + ", ".join(f"{w} {n}" for w, n in wheres.most_common(10)))
        for rid, where, x, y in rows[:show]:
            print(f"  - {rid} {items[rid]['mutations']}" + (f" [{where}]" if where else ""))
            print(f"      base: {_short(x, width)}")
            print(f"      code: {_short(y, width)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(Path(argv[1]), Path(argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the checkout before (its root)")
    parser.add_argument("--code", type=Path, required=True, help="the checkout after (its root)")
    parser.add_argument("--base-env", action="append", default=[], metavar="K=V", help="for the base side")
    parser.add_argument("--code-env", action="append", default=[], metavar="K=V", help="for the code side")
    parser.add_argument("--variants", type=int, default=2000, help="mutated requests (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help="comma-separated mutation kinds (bench/mutations.py MUTATORS)")
    parser.add_argument("--bench-sizes", default="200", help="bench records among the seeds ('' for none)")
    parser.add_argument("--select", help="only seeds whose id contains this (e.g. examples/)")
    parser.add_argument("--max-resources", type=int, default=250, help="seeds mutated: at most this size")
    parser.add_argument("--show", type=int, default=5, help="examples printed per kind")
    parser.add_argument("--width", type=int, default=300, help="characters per value printed")
    parser.add_argument("--save", type=Path, help="write each differing request and answers here")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--list", action="store_true", help="print the mutation labels only, run nothing")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    t0 = time.perf_counter()
    sizes = tuple(int(s) for s in args.bench_sizes.split(",") if s)
    seeds = [s for s in seed_requests(ROOT, sizes) if not args.select or args.select in s["id"]]
    only = args.only.split(",") if args.only else None
    items = variants(seeds, args.variants, args.seed, only, args.max_resources)
    print(
        f"{len(seeds)} seed requests, {len(items) - len(seeds)} variants (seed {args.seed}) "
        f"in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    if args.list:
        print("\n".join(f"{i['id']} {i['mutations']}" for i in items))
        return 0
    with tempfile.TemporaryDirectory(prefix="differential-") as tmp:
        items_path = Path(tmp) / "items.jsonl"
        with items_path.open("w") as f:
            for item in items:
                f.write(json.dumps(item) + "\n")
        t1 = time.perf_counter()
        sides = [
            run_side("base", args.base, args.base_env, items_path, args.python),
            run_side("code", args.code, args.code_env, items_path, args.python),
        ]
        codes = [p.wait() for p in sides]
        if any(codes):
            print(f"a side failed: exit {codes}", file=sys.stderr)
            return 2
        (head_a, a), (head_b, b) = read_side(sides[0]), read_side(sides[1])
    print(f"base {head_a}\ncode {head_b}\nran both sides in {time.perf_counter() - t1:.1f} s", flush=True)
    by_id = {i["id"]: i for i in items}
    found = {rid: d for rid in by_id if (d := differences(a[rid], b[rid]))}
    kinds = Counter(k for d in found.values() for k, *_ in d)
    for name, side in (("base", a), ("code", b)):
        tally = Counter(
            "crash" if "crash" in x else "error" if "error" in x else "answered" for x in side.values()
        )
        print(f"{name}: {dict(tally)}")
    report(found, by_id, args.show, args.width)
    if args.save and found:
        args.save.mkdir(parents=True, exist_ok=True)
        for rid in found:
            name = rid.replace("/", "_").replace(":", "_").replace("#", "_").replace("~", "_")
            (args.save / f"{name}.json").write_text(
                json.dumps({"item": by_id[rid], "base": a[rid], "code": b[rid]}, indent=1, ensure_ascii=False)
            )
    print(f"\n{len(items)} requests: {len(found)} differ" + (f" ({dict(kinds)})" if found else ""))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
