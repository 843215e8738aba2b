"""The medication facts' answers, checked against the rules they implement written out plainly
(issue 8, speed): ``trials`` and ``active_uses`` read each record once and decide most inline; their
answers must be those of the plain definitions, for every mix of kinds, statuses and dates."""

from __future__ import annotations

import itertools
import random
from datetime import date, timedelta

from cds_service.reading.medication_use import INACTIVE_MED_STATUS, MedicationFacts, MedUse
from cds_service.reading.terminology import DrugMatch
from cds_service.reading.timeline import in_effect

TODAY = date(2026, 5, 4)
KINDS = ("MedicationRequest", "MedicationStatement", "MedicationDispense", "MedicationAdministration")
STATUSES = ("active", "completed", "stopped", "on-hold", "cancelled", "not-taken", "unknown", "")
DRUGS = (
    DrugMatch(frozenset({"sertraline"}), matched_by="code"),
    DrugMatch(frozenset({"sertraline"}), matched_by="text"),
    DrugMatch(frozenset({"venlafaxine"}), matched_by="code"),
    DrugMatch(frozenset({"sertraline", "venlafaxine"}), matched_by="code"),  # not a real product
)


class _Facts(MedicationFacts):
    def __init__(self, uses: list[MedUse]) -> None:
        self.today = TODAY
        self._trials = {}
        self.the_uses = uses

    def uses_in(self, valueset: str) -> list[MedUse]:
        return self.the_uses

    class t:  # noqa: N801 - the terminology's one method trials asks
        @staticmethod
        def drug_in(drug: DrugMatch, valueset: str) -> frozenset[str]:
            return drug.ingredients


def _uses(seed: int, n: int) -> list[MedUse]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        start = TODAY - timedelta(days=rnd.randrange(-20, 700)) if rnd.random() > 0.05 else None
        end = None
        if start is not None and rnd.random() < 0.7:
            end = start + timedelta(days=rnd.choice((0, 1, 14, 29, 30, 31, 60, 90, 400)))
        out.append(
            MedUse(
                f"MedicationRequest/r{i}",
                rnd.choice(KINDS),
                rnd.choice(DRUGS),
                rnd.choice(STATUSES),
                start,
                end,
                rnd.choice(("", "", "stopped: no response")),
            )
        )
    return out


def _plain_trials(uses: list[MedUse], gap: int) -> list[tuple]:
    """Trials as the docstring defines them: per ingredient, records by start; a record less than
    ``gap`` days after the end so far joins the trial; ongoing when any record is (a prescription
    or statement not inactive and not ended before today); the trial ends at its records' latest
    end (an open record: today if ongoing, else its start; never after today), or, not ongoing, no
    later than the last end a prescription or statement recorded."""

    def ongoing(u: MedUse) -> bool:
        return (
            u.kind != "MedicationDispense"
            and u.status not in INACTIVE_MED_STATUS
            and (u.end is None or u.end >= TODAY)
        )

    def end_of(u: MedUse) -> date:
        assert u.start is not None
        return min(u.end if u.end is not None else (TODAY if ongoing(u) else u.start), TODAY)

    out = []
    for ing in sorted({i for u in uses for i in u.drug.ingredients}):
        mine = [u for u in uses if ing in u.drug.ingredients and u.start is not None]
        mine = [u for u in mine if u.kind != "MedicationAdministration"]
        mine.sort(key=lambda u: u.start)
        groups: list[list[MedUse]] = []
        for u in mine:
            if groups and (u.start - max(end_of(v) for v in groups[-1])).days <= gap:
                groups[-1].append(u)
            else:
                groups.append([u])
        for g in groups:
            is_ongoing = any(ongoing(u) for u in g)
            end = max(end_of(u) for u in g)
            explicit = [u.end for u in g if u.kind != "MedicationDispense" and u.end is not None]
            if not is_ongoing and explicit:
                end = min(end, max(explicit))
            reasons = [u.stop_reason for u in g if u.stop_reason]
            text = any(u.drug.matched_by == "text" for u in g)
            out.append((ing, g[0].start, end, is_ongoing, [u.ref for u in g], reasons, text))
    return sorted(out, key=lambda t: t[1])


def test_trials_are_the_plain_definitions_trials() -> None:
    for seed, n, gap in itertools.product(range(40), (1, 3, 12, 40), (0, 30)):
        uses = _uses(seed, n)
        got = [
            (t.ingredient, t.start, t.end, t.ongoing, t.refs, t.stop_reasons, t.text_matched)
            for t in _Facts(uses).trials("antidepressants", merge_gap_days=gap)
        ]
        want = _plain_trials(uses, gap)
        # trials starting the same day: the plain sort is by ingredient first, trials() keeps the
        # order it built them in; compare as multisets per start day, in start order
        assert [t[1] for t in got] == [t[1] for t in want], (seed, n, gap)
        assert sorted(got, key=repr) == sorted(want, key=repr), (seed, n, gap)


def test_active_uses_is_in_effect_with_the_same_drugs_records() -> None:
    """Ended prescriptions and statements count until the last supply of their drug (its
    dispenses and administrations), a record of one ingredient of a combination included."""
    for seed, n in itertools.product(range(60), (2, 6, 20)):
        uses = _uses(seed, n)
        for grace in (0, 7, 14):
            want = []
            for u in uses:
                if u.kind == "MedicationAdministration":
                    if (
                        u.status not in ("cancelled", "entered-in-error", "not-taken", "declined", "not-done")
                        and u.start
                        and (TODAY - u.start).days <= max(grace, 1)
                    ):
                        want.append(u.ref)
                    continue
                same = [v for v in uses if v.drug.ingredients & u.drug.ingredients]
                if in_effect(u, same, TODAY, grace):
                    want.append(u.ref)
            got = [u.ref for u in _Facts(uses).active_uses("antidepressants", grace_days=grace)]
            assert got == want, (seed, n, grace)


def test_a_uses_reference_is_the_records() -> None:
    from cds_service.reading.record import ref

    for res in (
        {"resourceType": "MedicationDispense", "id": "d-1"},
        {"resourceType": "MedicationDispense", "id": 7},
        {"resourceType": "MedicationDispense"},
        {"id": "x"},
        {},
    ):
        assert MedUse(None, "MedicationDispense", DRUGS[0], "", None, None, "", res).ref == ref(res)
    assert MedUse(None, "MedicationDispense", DRUGS[0], "", None, None).ref == ref({})


def test_a_requests_dates_are_its_bounds_else_its_validity_else_when_authored() -> None:
    from cds_service.reading.medication_records import DATES

    b_start, b_end, v_start, v_end = "2025-01-02", "2025-03-04", "2025-01-10", "2025-06-01"
    authored = "2024-12-30"
    d = date.fromisoformat
    for has in itertools.product((False, True), repeat=5):
        res: dict = {"resourceType": "MedicationRequest"}
        bounds = {k: v for k, v, h in (("start", b_start, has[0]), ("end", b_end, has[1])) if h}
        validity = {k: v for k, v, h in (("start", v_start, has[2]), ("end", v_end, has[3])) if h}
        if bounds:
            res["dosageInstruction"] = [{"timing": {"repeat": {"boundsPeriod": bounds}}}]
        if validity:
            res["dispenseRequest"] = {"validityPeriod": validity}
        if has[4]:
            res["authoredOn"] = authored
        start = bounds.get("start") or validity.get("start") or (authored if has[4] else None)
        end = bounds.get("end") or validity.get("end")
        assert DATES["MedicationRequest"](res) == (d(start) if start else None, d(end) if end else None), has
    odd = {"dosageInstruction": [{"timing": "daily"}], "dispenseRequest": [], "authoredOn": "2024"}
    assert DATES["MedicationRequest"](odd) == (date(2024, 1, 1), None)
