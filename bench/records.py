"""Realistic patient records of a chosen size for the benchmarks.

A record is the V1 vignette patient (``rules/tests/vignettes.yaml``, "V1 — Clear TRD, eligible")
plus years of ordinary chart history, written as compact-format entries and built into FHIR by
``cds_service.compact`` (the same builder as the rule tests and ``fhir_examples/``):

* vital signs at clinic visits: BP panels (85354-9), heart rate, weight, respiratory rate, SpO2,
  height, and orthostatic / "measured" variants with other LOINC codes (8459-0, 8460-8, 8461-6,
  3141-9) that the service does not read;
* surveys: GAD-7 totals (70274-6) and negative C-SSRS screeners;
* unrelated problem-list Conditions (anxiety, sleep, OCD, ADHD codes from VSAC "Mental Health
  Disorder" / "Mental Health Diagnoses"), some resolved;
* unrelated MedicationRequests with monthly MedicationDispenses (gabapentin, pregabalin, topiramate,
  meclizine … from VSAC "Central Nervous System Depressants" and CDC "CNS depressant medications"):
  products the project's terminology does not know, as most of a real medication list is;
* Procedures: psychotherapy sessions (CPT from VSAC 526.3.1496 "Psych Visit Psychotherapy").

Every noise code is copied, with its display, from a published value-set expansion (VSAC, CDC opioid
CDS; the file is named next to each list). ``python bench/records.py --verify [--shared DIR]`` re-checks
them against the project's copies of those expansions (developers: ``../shared/clinical/valuesets``
next to the checkout) and checks that no
noise condition or medication is in one of the project's value sets. No laboratory LOINC code is
verified in the shared sources — and the service's prefetch asks only for vital-signs, survey and
pregnancy-status Observations, so a conformant EHR would not send lab results — so the "lab-like"
observations are the other vital-sign LOINC codes above.

All noise is dated at least 8 days before the evaluation time (V1's own data is newer), values are
normal, and no noise drug or condition is one the rules look for, so the decision stays V1's; the
psychotherapy sessions are the exception on purpose (they change one framework row's status text
from "not recorded" to "recorded", not the cards' topics or indicators).

Sizes count the FHIR resources in ``prefetch`` (Patient included; draft orders excluded). The V1
patient alone is 37 resources. Deterministic: the same (size, hook, seed) gives the same JSON.

    python bench/records.py --size 200 --hook order-sign --out /tmp/typical.json
    python bench/records.py --summary          # resource counts per size and type
    python bench/records.py --verify           # codes vs the shared expansions and rules/
    python bench/records.py --check-cards      # every size and hook gives V1's cards
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import uuid
from collections import Counter
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cds_service import compact  # noqa: E402

VIGNETTES = ROOT / "rules" / "tests" / "vignettes.yaml"
BASE_CASE_ID = "v01-clear-trd-eligible"
#: The project's copies of the value-set expansions (a developer's folder next to the checkout).
SHARED = ROOT.parent / "shared" / "clinical" / "valuesets"

SIZES = {"typical": 200, "1k": 1000, "2k": 2000, "large": 5000}
HOOKS = ("patient-view", "order-select", "order-sign")
SERVICE_FOR_HOOK = {h: h for h in HOOKS}  # service ids equal hook names (cds_service/services.py)

# -- noise codes, copied from the value-set expansions (file names relative to SHARED) -------------
MHD = "vsac/2.16.840.1.113883.3.464.1003.105.12.1004.json"  # Mental Health Diagnoses
MHDIS = "vsac/2.16.840.1.113762.1.4.1029.314.json"  # Mental Health Disorder
CNS = "vsac/2.16.840.1.113762.1.4.1248.134.json"  # Central Nervous System Depressants
CDC_CNS = "cdc-opioid-cds/cns-depressant-medications.json"
PSYCHOTHERAPY = "vsac/2.16.840.1.113883.3.526.3.1496.json"  # Psych Visit Psychotherapy
WEIGHT_VS = "vsac/2.16.840.1.113762.1.4.1045.159.json"  # Body Weight
SBP_VS = "vsac/2.16.840.1.113762.1.4.1045.163.json"  # Systolic Blood Pressure

# (ICD-10-CM code, display, source file)
NOISE_CONDITIONS: list[tuple[str, str, str]] = [
    ("F41.1", "Generalized anxiety disorder", MHDIS),
    ("F41.0", "Panic disorder [episodic paroxysmal anxiety]", MHDIS),
    ("F41.9", "Anxiety disorder, unspecified", MHDIS),
    ("F43.10", "Post-traumatic stress disorder, unspecified", MHDIS),
    ("F40.10", "Social phobia, unspecified", MHD),
    ("F42.9", "Obsessive-compulsive disorder, unspecified", MHD),
    ("F51.01", "Primary insomnia", MHD),
    ("F51.09", "Other insomnia not due to a substance or known physiological condition", MHD),
    ("F45.41", "Pain disorder exclusively related to psychological factors", MHD),
    ("F90.0", "Attention-deficit hyperactivity disorder, predominantly inattentive type", MHD),
]

# (RxNorm SCD, display, strength mg, doses per day, source file)
NOISE_MEDICATIONS: list[tuple[str, str, int, int, str]] = [
    ("310431", "gabapentin 300 MG Oral Capsule", 300, 3, CNS),
    ("310433", "gabapentin 600 MG Oral Tablet", 600, 2, CNS),
    ("483450", "pregabalin 75 MG Oral Capsule", 75, 2, CNS),
    ("483440", "pregabalin 150 MG Oral Capsule", 150, 2, CNS),
    ("151226", "topiramate 50 MG Oral Tablet", 50, 2, CNS),
    ("311289", "levetiracetam 500 MG Oral Tablet", 500, 2, CNS),
    ("312137", "oxcarbazepine 300 MG Oral Tablet", 300, 2, CNS),
    ("809987", "lacosamide 100 MG Oral Tablet", 100, 2, CNS),
    ("197304", "acetazolamide 250 MG Oral Tablet", 250, 2, CNS),
    ("995666", "meclizine hydrochloride 25 MG Oral Tablet", 25, 1, CDC_CNS),
]

# (CPT code, display, source file)
NOISE_PROCEDURES: list[tuple[str, str, str]] = [
    ("90834", "Psychotherapy, 45 minutes with patient", PSYCHOTHERAPY),
    ("90837", "Psychotherapy, 60 minutes with patient", PSYCHOTHERAPY),
    ("90832", "Psychotherapy, 30 minutes with patient", PSYCHOTHERAPY),
]

# Other LOINC codes the service does not read (checked against their VSAC expansions).
OTHER_LOINC: list[tuple[str, str, str]] = [
    ("8459-0", "Systolic blood pressure--sitting", SBP_VS),
    ("8460-8", "Systolic blood pressure--standing", SBP_VS),
    ("8461-6", "Systolic blood pressure--supine", SBP_VS),
    ("3141-9", "Body weight Measured", WEIGHT_VS),
]

# Shares of the noise (by resource count); vital signs fill whatever is left so sizes are exact.
SHARES = {"medications": 0.28, "surveys": 0.08, "conditions": 0.03, "procedures": 0.08}
NOISE_END_DAYS = 8  # newest noise is this many days before "now"
MED_COURSE_DAYS = (90, 540)


# -- the base case ----------------------------------------------------------------------------------
@cache
def _cases() -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in compact.load_cases(VIGNETTES)}


def base_case(hook: str = "order-sign") -> dict[str, Any]:
    """V1 as a compact case for ``hook`` (patient-view: the same patient without draft orders)."""
    if hook not in HOOKS:
        raise ValueError(f"hook must be one of {HOOKS}")
    case = copy.deepcopy(_cases()[BASE_CASE_ID])
    case.pop("expect", None)
    case["hook"] = hook
    if hook == "patient-view":
        case.pop("orders", None)
    return case


def count_resources(request: dict[str, Any]) -> int:
    """FHIR resources in a request's prefetch (the Patient counts one)."""
    n = 0
    for value in (request.get("prefetch") or {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            n += len(value.get("entry") or [])
        elif isinstance(value, dict):
            n += 1
    return n


def count_by_type(request: dict[str, Any]) -> Counter[str]:
    out: Counter[str] = Counter()
    for value in (request.get("prefetch") or {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            out.update(e["resource"]["resourceType"] for e in value.get("entry") or [])
        elif isinstance(value, dict):
            out[value.get("resourceType", "?")] += 1
    return out


# -- noise ------------------------------------------------------------------------------------------
def _day(d: date) -> str:
    return d.isoformat()


class _Noise:
    def __init__(self, now: datetime, rng: random.Random) -> None:
        self.now = now
        self.rng = rng
        self.last = now.date() - timedelta(days=NOISE_END_DAYS)

    def conditions(self, n: int) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            code, display, _ = NOISE_CONDITIONS[i % len(NOISE_CONDITIONS)]
            onset = self.last - timedelta(days=self.rng.randint(60, 15 * 365))
            entry: dict[str, Any] = {"code": f"icd:{code}", "text": display, "onset": _day(onset)}
            if self.rng.random() < 0.35:
                abated = min(onset + timedelta(days=self.rng.randint(30, 900)), self.last)
                entry.update(status="resolved", abatement=_day(abated))
            else:
                entry["status"] = "active"
            out.append(entry)
        return out

    def medications(self, budget: int) -> list[dict[str, Any]]:
        """Courses of one request + monthly dispenses, ending before the V1 data; ≤ budget resources."""
        out: list[dict[str, Any]] = []
        used = 0
        end = self.last
        i = 0
        while budget - used >= 2:
            code, display, strength, per_day, _ = NOISE_MEDICATIONS[i % len(NOISE_MEDICATIONS)]
            i += 1
            days = self.rng.randint(*MED_COURSE_DAYS)
            dispenses = min(days // 30 + 1, budget - used - 1)
            days = (dispenses - 1) * 30
            start = end - timedelta(days=days)
            out.append(
                {
                    "code": f"rx:{code}",
                    "text": display,
                    "dose": f"{strength} mg",
                    "frequency": f"{per_day}/d",
                    "start": _day(start),
                    "end": _day(end),
                    "status": "completed",
                    "dispenses": "30d",
                }
            )
            used += 1 + dispenses
            # the next course (another drug) ended some weeks before this one started
            end = start - timedelta(days=self.rng.randint(0, 120))
        return out

    def procedures(self, n: int) -> list[dict[str, Any]]:
        out = []
        day = self.last
        for i in range(n):
            code, display, _ = NOISE_PROCEDURES[i % len(NOISE_PROCEDURES)]
            out.append({"code": f"cpt:{code}", "text": display, "date": _day(day)})
            day -= timedelta(days=self.rng.choice((7, 7, 7, 14)))
        return out

    def surveys(self, n: int) -> list[dict[str, Any]]:
        """GAD-7 totals and negative C-SSRS screeners (4 items each) at visits, newest first."""
        out: list[dict[str, Any]] = []
        used = 0
        day = self.last
        while n - used >= 1:
            if n - used >= 5:
                out.append({"cssrs_screen": "negative", "date": _day(day), "time": "10:05"})
                used += 4
            out.append(
                {
                    "code": "loinc:70274-6",
                    "value": self.rng.randint(3, 14),
                    "date": _day(day),
                    "time": "10:00",
                }
            )
            used += 1
            day -= timedelta(days=self.rng.randint(28, 92))
        return out

    def vitals(self, n: int, span_years: float) -> list[dict[str, Any]]:
        """Clinic-visit vital signs, newest first, spread over ``span_years``; exactly ``n``."""
        per_visit = 6.5
        visits = max(1, round(n / per_visit))
        step = max(1.0, span_years * 365 / visits)
        out: list[dict[str, Any]] = []
        rng = self.rng
        k = 0
        while len(out) < n:
            day = _day(self.last - timedelta(days=int(k * step)))
            sbp, dbp = rng.randint(108, 134), rng.randint(64, 84)
            visit = [
                {"code": "loinc:85354-9", "systolic": sbp, "diastolic": dbp, "date": day, "time": "09:10"},
                {"code": "loinc:8867-4", "value": rng.randint(58, 86), "date": day, "time": "09:10"},
                {
                    "code": "loinc:29463-7",
                    "value": f"{round(rng.uniform(67.0, 73.0), 1)} kg",
                    "date": day,
                    "time": "09:05",
                },
                {"code": "loinc:9279-1", "value": rng.randint(12, 18), "date": day, "time": "09:10"},
                {
                    "code": ["loinc:59408-5", "loinc:2708-6"],
                    "value": rng.randint(96, 99),
                    "date": day,
                    "time": "09:10",
                },
            ]
            if k % 2 == 0:  # orthostatic readings and a second weight at every other visit
                visit += [
                    {
                        "code": "loinc:8459-0",
                        "value": f"{sbp} mm[Hg]",
                        "category": "vital-signs",
                        "date": day,
                        "time": "09:12",
                    },
                    {
                        "code": "loinc:8460-8",
                        "value": f"{sbp - rng.randint(0, 10)} mm[Hg]",
                        "category": "vital-signs",
                        "date": day,
                        "time": "09:14",
                    },
                    {
                        "code": "loinc:3141-9",
                        "value": f"{round(rng.uniform(67.0, 73.0), 1)} kg",
                        "category": "vital-signs",
                        "date": day,
                        "time": "09:05",
                    },
                ]
            if k % 10 == 0:
                visit += [
                    {"code": "loinc:8302-2", "value": 166, "date": day, "time": "09:05"},
                    {
                        "code": "loinc:8461-6",
                        "value": f"{sbp - 4} mm[Hg]",
                        "category": "vital-signs",
                        "date": day,
                        "time": "09:08",
                    },
                ]
            out += visit[: n - len(out)]
            k += 1
        return out


def build_case(size: int, hook: str = "order-sign", seed: int = 0) -> dict[str, Any]:
    """V1 plus noise: a compact case whose request carries exactly ``size`` prefetch resources."""
    case = base_case(hook)
    base_n = count_resources(compact.build_request(case))
    if size < base_n:
        raise ValueError(f"size {size} is below the V1 patient's own {base_n} resources")
    noise_n = size - base_n
    rng = random.Random(f"{seed}:{size}")  # the same history for every hook
    gen = _Noise(compact.parse_now(case["now"]), rng)
    n_cond = round(noise_n * SHARES["conditions"])
    n_proc = round(noise_n * SHARES["procedures"])
    n_surv = round(noise_n * SHARES["surveys"])
    n_meds = round(noise_n * SHARES["medications"])
    meds = gen.medications(n_meds)
    med_resources = sum(1 + len(_dispense_days(m)) for m in meds)
    surveys = gen.surveys(n_surv)
    surv_resources = sum(4 if "cssrs_screen" in s else 1 for s in surveys)
    n_vitals = noise_n - n_cond - n_proc - med_resources - surv_resources
    span = 2 + min(10.0, noise_n / 400)  # more history for bigger records, ≤ 12 years
    case["conditions"] = list(case.get("conditions") or []) + gen.conditions(n_cond)
    case["medications"] = meds + list(case.get("medications") or [])
    case["observations"] = list(case.get("observations") or []) + surveys + gen.vitals(n_vitals, span)
    case["procedures"] = list(case.get("procedures") or []) + gen.procedures(n_proc)
    case["id"] = f"bench-{size}-{hook}"
    return case


def _dispense_days(entry: dict[str, Any]) -> list[str]:
    start, end = date.fromisoformat(entry["start"]), date.fromisoformat(entry["end"])
    return [_day(start + timedelta(days=30 * i)) for i in range((end - start).days // 30 + 1)]


@cache
def _request_json(size: int, hook: str, seed: int) -> str:
    case = build_case(size, hook, seed)
    request = compact.build_request(case)
    got = count_resources(request)
    if got != size:
        raise AssertionError(f"built {got} resources, wanted {size}")
    return json.dumps(request, separators=(",", ":"))


def build_request(
    size: int, hook: str = "order-sign", seed: int = 0, *, fresh_instance: bool = False
) -> dict[str, Any]:
    """The CDS Hooks request (a new dict each call). ``fresh_instance`` gives a new hookInstance."""
    request = json.loads(_request_json(size, hook, seed))
    if fresh_instance:
        request["hookInstance"] = str(uuid.uuid4())
    return request


def request_bytes(size: int, hook: str = "order-sign", seed: int = 0) -> bytes:
    """The request as compact JSON bytes, as an EHR would post it."""
    return _request_json(size, hook, seed).encode()


PATIENT_ID = "v01"  # V1's patient id: every resource id, reference and prefetch query contains it


def patient_variant(body: bytes, patient_id: str, hook_instance: str | None = None) -> bytes:
    """The same record for another patient (and optionally another hookInstance).

    Every id, reference and query of the request names the patient, so the variant's resources
    have different content: caches keyed by content (the service's validation verdicts) miss, as
    they would for a new patient. ``patient_id`` must be a valid FHIR id ([A-Za-z0-9-.]{1,40}).
    """
    out = body.replace(PATIENT_ID.encode(), patient_id.encode())
    if hook_instance is not None:
        start = out.index(b'"hookInstance":"') + len(b'"hookInstance":"')
        out = out[:start] + hook_instance.encode() + out[start + 36 :]
    return out


# -- verification -----------------------------------------------------------------------------------
def verify(shared: Path = SHARED) -> list[str]:
    """Problems: a noise code/display not in its shared expansion, or a noise code that the
    project's value sets or terminology would recognise."""
    problems: list[str] = []
    expansions: dict[str, dict[str, str]] = {}

    def lookup(fname: str) -> dict[str, str]:
        if fname not in expansions:
            data = json.loads((shared / fname).read_text())
            expansions[fname] = {c["code"]: c.get("display", "") for c in data["expansion"]["contains"]}
        return expansions[fname]

    if not shared.is_dir():
        return [f"{shared}: not found; cannot verify noise codes"]
    lists = (
        [(c, d, f) for c, d, f in NOISE_CONDITIONS]
        + [(c, d, f) for c, d, _, _, f in NOISE_MEDICATIONS]
        + NOISE_PROCEDURES
        + OTHER_LOINC
    )
    for code, display, fname in lists:
        got = lookup(fname).get(code)
        if got is None:
            problems.append(f"{code}: not in {fname}")
        elif got != display:
            problems.append(f"{code}: display {display!r} differs from {fname}: {got!r}")

    from cds_service.config import Settings
    from cds_service.engine.loader import load_ruleset
    from cds_service.reading.terminology import ICD10CM, RXNORM, norm_code

    settings = Settings.from_env()
    ruleset = load_ruleset(settings.rules_dir, settings.site_config_path)
    t = ruleset.terminology
    for code, _display, _ in NOISE_CONDITIONS:
        for vs in t.valuesets.values():
            if norm_code(ICD10CM, code) in vs.codes:
                problems.append(f"condition {code} is in project value set {vs.id}")
    for code, display, *_ in NOISE_MEDICATIONS:
        m = t.match_drug({"coding": [{"system": RXNORM, "code": code}], "text": display})
        if m.ingredients:
            problems.append(f"medication {code} {display!r} is recognised as {sorted(m.ingredients)}")
    kinds = {
        (c["system"], str(c["code"]))
        for spec in ruleset.observation_kinds.values()
        for c in spec.get("codes") or []
    }
    for code, _display, _ in OTHER_LOINC:
        if ("http://loinc.org", code) in kinds:
            problems.append(f"LOINC {code} is read by the service (rules/terminology/observations.yaml)")
    return problems


def check_cards(sizes: list[int], seed: int = 0) -> list[str]:
    """Differences between the cards (indicator, topic) of V1 alone and of V1 with noise."""
    from cds_service import pipeline
    from cds_service.config import Settings
    from cds_service.engine.loader import load_ruleset

    settings = Settings.from_env(allow_time_override=True)
    ruleset = load_ruleset(settings.rules_dir, settings.site_config_path)

    def signature(request: dict[str, Any]) -> list[tuple[str, str]]:
        cards = pipeline.run(request, ruleset, settings).response["cards"]
        return [(c["indicator"], c["source"]["topic"]["code"]) for c in cards]

    problems = []
    for hook in HOOKS:
        base = signature(compact.build_request(base_case(hook)))
        for size in sizes:
            got = signature(build_request(size, hook, seed))
            if got != base:
                problems.append(f"{hook} {size}: {got} differs from V1's {base}")
            else:
                print(f"{hook:13} {size:5}: same cards as V1 {base}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=SIZES["typical"])
    p.add_argument("--hook", choices=HOOKS, default="order-sign")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the request JSON here (default: stdout)")
    p.add_argument("--summary", action="store_true", help="resource counts of every standard size")
    p.add_argument("--verify", action="store_true", help="check noise codes against shared sources")
    p.add_argument("--shared", type=Path, default=SHARED, help=f"value-set expansions (default {SHARED})")
    p.add_argument("--check-cards", action="store_true", help="every size and hook gives V1's cards")
    args = p.parse_args(argv)
    if args.check_cards:
        problems = check_cards(list(SIZES.values()), args.seed)
        for msg in problems:
            print(msg)
        return 1 if problems else 0
    if args.verify:
        problems = verify(args.shared)
        for msg in problems:
            print(msg)
        print("noise codes OK" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    if args.summary:
        for name, size in SIZES.items():
            req = build_request(size, args.hook, args.seed)
            kb = len(request_bytes(size, args.hook, args.seed)) / 1024
            types = ", ".join(f"{t} {n}" for t, n in sorted(count_by_type(req).items()))
            print(f"{name:8} {size:5} resources {kb:8.0f} KiB  {types}")
        return 0
    text = request_bytes(args.size, args.hook, args.seed).decode()
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
