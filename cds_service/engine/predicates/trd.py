"""Treatment-resistant depression from the medication record: counted and not-counted trials, episodes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any, NamedTuple

from ...reading.facts import Facts, Trial
from .core import CompileContext, Env, Leaf, Missing, Node, Result, check_args, predicate
from .trd_scores import (
    could_change,
    not_numbers,
    score_change,
    trial_span,
    unread_near,
    unread_scores,
    weighed_kinds,
)
from .views import num, plural_kinds, unidentified_why, unreadable_why

NON_RESPONSE_WORDS = (
    "inadequate response",
    "non-response",
    "nonresponse",
    "no response",
    "not respond",
    "lack of efficacy",
    "ineffective",
)
#: the data gap when trials whose dose could not be read decide TRD (rules/common.yaml data_needs)
GAP = "daily dose of an antidepressant trial"
#: the data gap when antidepressant records whose status or dates could not be read decide it
RECORD_GAP = "record of an antidepressant trial"
#: the data gap when depression scores that could not be read may join two episodes
SCORE_GAP = "depression score deciding where the episode starts"
#: the data gap when depression scores that could not be read may change a trial's outcome
TRIAL_SCORE_GAP = "depression score of an antidepressant trial"
INTOLERANCE_WORDS = ("intoler", "side effect", "adverse", "nausea", "rash", "sexual dysfunction", "allerg")


@predicate(
    "trd",
    "Treatment-resistant depression from the medication record: at least `min_trials` distinct "
    "antidepressants (value set) tried in the current episode for at least `min_duration_days`, "
    "at an adequate dose where `adequate_doses` (mg/day by ingredient) says, and without a response "
    "(score improvement of at least `response_improvement_pct` on `score_kinds`). Ongoing trials and "
    "trials stopped for intolerance are listed but not counted.",
)
def _trd(args: Any, ctx: CompileContext) -> Node:
    allowed = {
        "valueset",
        "episode_valueset",
        "min_trials",
        "min_duration_days",
        "response_improvement_pct",
        "lookback_months",
        "adequate_doses",
        "adequate_doses_source",
        "score_kinds",
        "remission_below",
        "remission_days",
        "untreated_gap_days",
    }
    a = check_args(args, allowed, {"valueset", "episode_valueset"})
    spec = {
        "vs": ctx.valueset(a["valueset"], "medication", ("valueset",)),
        "episode_vs": ctx.valueset(a["episode_valueset"], "condition", ("episode_valueset",)),
        "min_trials": ctx.number(a, "min_trials", 2),
        "min_days": ctx.number(a, "min_duration_days", 28),
        "response_pct": ctx.number(a, "response_improvement_pct", 25),
        "lookback_months": ctx.number(a, "lookback_months", 24),
        "doses": ctx.value(a.get("adequate_doses") or {}, ("adequate_doses",)),
        "score_kinds": tuple(ctx.value(a.get("score_kinds") or ["phq9", "madrs"])),
        "doses_source": ctx.value(
            a.get("adequate_doses_source") or "site dose table", ("adequate_doses_source",)
        ),
        "remission_below": ctx.value(a.get("remission_below") or {}, ("remission_below",)),
        "remission_days": ctx.number(a, "remission_days", 60),
        "untreated_gap_days": ctx.number(a, "untreated_gap_days", 365),
    }
    for k in spec["score_kinds"]:
        ctx.kind(k, ("score_kinds",))
    for k in spec["remission_below"]:
        ctx.kind(k, ("remission_below",))

    def run(env: Env, s: dict[str, Any]) -> Result:
        summary = assess_trd(env.facts, s)
        if summary["met"] is None:
            return _undecided(env, s, summary)
        return Result(
            summary["met"],
            bind={"trd": summary},
            evidence=[r for t in summary["counted"] for r in t["refs"]],
            reason=f"{len(summary['counted'])} adequate failed trial(s)",
        )

    return Leaf("trd", run, spec, {f"valueset:{spec['vs']}", f"valueset:{spec['episode_vs']}"})


def _undecided(env: Env, s: dict[str, Any], summary: dict[str, Any]) -> Result:
    """Unknown: what could not be read decides TRD — trials whose recorded dose could not be read
    (counted, TRD would be met), antidepressant records whose status or dates could not be read
    (read, they could add a trial or take a counted one away). Each gap names what could not be
    read (kinds of dose, kinds of record and their elements; never a value, an id or the drug);
    the evidence points at the records."""
    trials = summary.get("undecided_trials", [])
    records = summary.get("unread_records", [])
    evidence = [r for t in trials for r in t["dose_unread_refs"]]
    missing = []
    parts = [f"{summary['count']} adequate failed trial(s)"]
    if trials:
        reasons = list(dict.fromkeys(why for t in trials for why in t["dose_unread"]))
        missing.append(Missing("trd-trial-dose", GAP, quality="readable", why="; ".join(reasons)))
        parts.append(f"{len(trials)} more by a dose not read")
    unknown = set(env.facts.unidentified_uses()) if records else set()
    unread = [r for r in records if r not in unknown]
    unidentified = [r for r in records if r in unknown]
    evidence += records
    if unread:
        missing.append(
            Missing("trd-trial-record", RECORD_GAP, quality="readable", why=unreadable_why(env, unread))
        )
        parts.append(f"{len(unread)} antidepressant record(s) not read could change it")
    if unidentified:
        missing.append(
            Missing("trd-trial-record", RECORD_GAP, quality="readable", why=unidentified_why(unidentified))
        )
        parts.append(f"{len(unidentified)} medication record(s) whose drug is not known could change it")
    for key, gap_id, label, could in (
        ("unread_scores", "trd-episode-score", SCORE_GAP, "could join or separate episodes"),
        ("unread_trial_scores", "trd-trial-score", TRIAL_SCORE_GAP, "could change a trial's outcome"),
    ):
        if scores := summary.get(key, []):
            evidence += [r for r in scores if r not in evidence]
            missing.append(Missing(gap_id, label, quality="readable", why=_scores_why(env, s, scores)))
            parts.append(f"{len(scores)} depression score(s) not read {could}")
    return Result(None, bind={"trd": summary}, evidence=evidence, missing=missing, reason=", ".join(parts))


def _scores_why(env: Env, s: dict[str, Any], refs: list[str]) -> str:
    """Which scores and elements could not be read, and which were read as text, not numbers."""
    text = {o.ref for kind in weighed_kinds(s) for o in not_numbers(env.facts, kind)}
    parts = [unreadable_why(env, unread)] if (unread := [r for r in refs if r not in text]) else []
    if written := [r for r in refs if r in text]:
        parts.append(f"{plural_kinds(written)} with a value that is not a number")
    return "; ".join(parts)


def assess_trd(facts: Facts, s: dict[str, Any]) -> dict[str, Any]:
    """Sort each antidepressant trial into counted / not counted, with the reason for each.

    Depression scores that are there but could not be read (or are not numbers) are weighed where
    the answer rests on the *absence* of scores. Episodes are separated by stretches without scores
    (or with remission scores alone): read as showing depression, such a score could join the
    episodes; read as remission, separate them. A trial's outcome rests on the scores nearest its
    start and end: one not read could turn a counted failure into a response, or a response left
    out into a failure. When any of these would change the answer, TRD is unknown and the scores
    are asked for."""
    summary, left = _assess(facts, s, _last_remission(facts, s))
    if summary["met"] is None:
        return summary
    unread = unread_scores(facts, s)
    if not unread:
        return summary
    dated = [(day, kind) for _, day, kind in unread if day is not None and kind in s["remission_below"]]
    undated = any(day is None for _, day, kind in unread if kind in s["remission_below"])
    if summary["met"] is False:  # joined: depression wherever it could be (undated: anywhere)
        other, _ = _assess(facts, s, None if undated else _last_remission(facts, s, dated, float("inf")))
    else:  # separated: remission where it was recorded (undated scores cannot be placed)
        other, _ = _assess(facts, s, _last_remission(facts, s, dated, float("-inf")))
    if other["met"] is not summary["met"]:
        summary["met"] = None
        summary["unread_scores"] = list(dict.fromkeys(r for r, _, k in unread if k in s["remission_below"]))
        if other.get("unread_records"):
            summary["unread_records"] = other["unread_records"]
        # the other reading's trials whose dose could not be read may decide it too: asked for
        mine = {v["ingredient"] for v in summary.get("undecided_trials", ())}
        if more := [v for v in other.get("undecided_trials", ()) if v["ingredient"] not in mine]:
            summary["undecided_trials"] = [*summary.get("undecided_trials", ()), *more]
        return summary
    for view in summary["counted"]:
        if view["outcome"].startswith("no scores recorded") and unread_near(
            s, trial_span(facts, view), unread
        ):
            view["outcome"] = "scores recorded but not read: failure presumed from the switch"
    _weigh_trial_scores(facts, s, summary, left, unread)
    return summary


def _weigh_trial_scores(
    facts: Facts,
    s: dict[str, Any],
    summary: dict[str, Any],
    left: Open,
    unread: list[tuple[str, date | None, str]],
) -> None:
    """Unknown when scores not read could change enough trials' outcomes to change the answer:
    counted failures that could be responses ("met"), or responses left out that could be failures
    ("not established"), each together with what unread antidepressant records could do."""
    counted = {v["ingredient"] for v in summary["counted"]}
    changing: dict[str, list[str]] = {}  # by ingredient, the unread scores that could change its trial
    if summary["met"]:
        for view in summary["counted"]:
            if refs := could_change(facts, s, trial_span(facts, view), unread):
                changing[view["ingredient"]] = refs
        records, record_refs = left.could_remove & counted, left.remove_refs
        decided = len(counted - set(changing) - records) >= summary["min_trials"]
    else:
        for ingredient, trials in left.responded.items():
            refs = [r for t in trials for r in could_change(facts, s, (t.start, t.end), unread)]
            if ingredient not in counted and refs:
                changing[ingredient] = refs
        undecided = {v["ingredient"] for v in summary.get("undecided_trials", ())}
        records, record_refs = left.could_add, left.add_refs
        decided = len(counted | undecided | set(changing) | records) < summary["min_trials"]
    if changing and not decided:
        summary["met"] = None
        summary["unread_trial_scores"] = list(dict.fromkeys(r for rs in changing.values() for r in rs))
        if records and record_refs:
            summary["unread_records"] = record_refs


class Open(NamedTuple):
    """What :func:`_assess` leaves open beside its summary: by ingredient, this episode's trials
    left out as a response, and the ingredients (with the records' references) that antidepressant
    records not read could add as a trial or take away from the counted ones."""

    responded: dict[str, list[Trial]]
    could_add: set[str]
    add_refs: list[str]
    could_remove: set[str]
    remove_refs: list[str]


def _assess(facts: Facts, s: dict[str, Any], remission: dict[str, Any] | None) -> tuple[dict[str, Any], Open]:
    """The trials sorted for the episode that ``remission`` (the latest separating stretch) leaves,
    and what is left open (:class:`Open`)."""
    episodes = [c for c in facts.conditions_in(s["episode_vs"]) if c.active]
    onsets = [c.onset for c in episodes if c.onset]
    if onsets:
        episode_start, episode_basis = max(onsets), "onset of the recorded depressive episode"
    else:
        episode_start = facts.today - timedelta(days=int(s["lookback_months"] * 30.4))
        episode_basis = f"no episode onset recorded: looked back {s['lookback_months']:g} months"
    # DSM-5: episodes are separate when >= 2 months pass without meeting criteria. A recurrent-MDD
    # onset is often the first-ever diagnosis, so a later remission starts a new episode.
    earlier_episode = None
    if remission is not None and remission["end"] > episode_start:
        episode_start = remission["end"]
        episode_basis = f"after {remission['why']} (DSM-5: ≥ 2 months without an episode separates episodes)"
        earlier_episode = remission
    counted: list[dict[str, Any]] = []
    not_counted: list[dict[str, Any]] = []
    by_ingredient: dict[str, list[Trial]] = {}
    for trial in facts.trials(s["vs"]):
        by_ingredient.setdefault(trial.ingredient, []).append(trial)
    undecided: list[dict[str, Any]] = []  # ingredients counted or not by a dose that could not be read
    responded: dict[str, list[Trial]] = {}
    earlier: set[str] = set()  # ingredients with a trial left out as the earlier episode's
    for ingredient, trials in by_ingredient.items():
        best: dict[str, Any] | None = None
        reasons: list[str] = []
        undecided_by: tuple[Trial, str] | None = None
        for t in trials:
            if t.end < episode_start:
                if earlier_episode is not None:
                    earlier.add(ingredient)
                    reasons.append(
                        f"earlier episode: ended {t.end.isoformat()}, before {earlier_episode['why']}"
                    )
                else:
                    reasons.append(f"ended before the current episode ({episode_start.isoformat()})")
                continue
            attested = any(w in r.lower() for r in t.stop_reasons for w in NON_RESPONSE_WORDS)
            if t.ongoing and not attested:
                reasons.append(
                    f"ongoing ({t.weeks} wk): outcome not yet known (a clinician can attest non-response)"
                )
                continue
            if any(w in r.lower() for r in t.stop_reasons for w in INTOLERANCE_WORDS):
                reasons.append(f"stopped for intolerance after {t.days} d (intolerance is not resistance)")
                continue
            if t.days < s["min_days"]:
                reasons.append(f"{t.days} d is shorter than the adequate {s['min_days']:g} d")
                continue
            minimum = (s["doses"] or {}).get(ingredient)
            # A dose recorded but not readable (no unit, tablets, text only …) is not "no dose
            # recorded": below the minimum is then unknown, unless a readable dose reached it.
            unread = minimum is not None and t.dose_unread and not (t.max_daily_dose or 0) >= minimum
            if (
                minimum is not None
                and not unread
                and t.max_daily_dose is not None
                and t.max_daily_dose < minimum
            ):
                reasons.append(
                    f"{num(t.max_daily_dose)} mg/day is below the minimal adequate dose of "
                    f"{num(minimum)} mg/day ({s['doses_source']})"
                )
                continue
            change = score_change(facts, t, s["score_kinds"])
            if change is not None and change["improvement_pct"] >= s["response_pct"]:
                reasons.append(
                    f"{change['kind']} improved {change['improvement_pct']:.0f}% (response, not failure)"
                )
                responded.setdefault(ingredient, []).append(t)
                continue
            if unread:  # an adequate failed trial or not, by a dose that could not be read
                why = "; ".join(t.dose_unread)
                undecided_by = (t, f"dose recorded but could not be read ({why}): adequacy not assessed")
                continue
            view = _trial_view(facts, t)  # a counted trial: the ones left out show only their last
            view["dose_assessed"] = minimum is not None and t.max_daily_dose is not None
            view["dose_note"] = (
                f"dose ≥ {num(minimum)} mg/day ({s['doses_source']})"
                if view["dose_assessed"]
                else "dose not recorded: adequacy not assessed"
                if minimum is not None
                else f"not in the {s['doses_source']}: dose adequacy not rated"
            )
            view["outcome"] = (
                "clinician-attested non-response"
                if attested and change is None
                else f"{change['kind']} {change['start']}→{change['end']}"
                if change
                else "no scores recorded: failure presumed from the switch"
            )
            best = view
            break
        if best is not None:
            counted.append(best)
        elif undecided_by is not None:
            trial, why = undecided_by
            view = _trial_view(facts, trial)
            view["why"] = why
            view["dose_unread"] = list(trial.dose_unread)
            view["dose_unread_refs"] = list(trial.dose_unread_refs)
            not_counted.append(view)
            undecided.append(view)
        else:
            last = _trial_view(facts, trials[-1])
            last["why"] = reasons[-1] if reasons else "not assessable"
            not_counted.append(last)
    counted.sort(key=lambda v: v["start"])
    not_counted.sort(key=lambda v: v["start"])
    met: bool | None = len(counted) >= s["min_trials"]
    unread = _unread_records(facts, s, counted, undecided, earlier if earlier_episode else None)
    if met and len(counted) - len(unread["could_remove"]) < s["min_trials"]:
        met = None  # unread records of counted drugs could take trials away
        unread_refs = unread["remove_refs"]
    else:
        unread_refs = unread["add_refs"]
        if not met and len(counted) + len(undecided) + len(unread["could_add"]) >= s["min_trials"]:
            met = None  # the trials whose dose could not be read, or unread records, decide it
        elif not met and earlier_episode is not None and earlier_episode["off"] and unread["any_refs"]:
            # an unread record may fall in the stretch off antidepressants that separated the
            # episodes: the earlier episode's trials might then be this one's
            widened = unread["could_add"] | (earlier - {v["ingredient"] for v in counted + undecided})
            if len(counted) + len(undecided) + len(widened) >= s["min_trials"]:
                met, unread_refs = None, unread["any_refs"]
    summary: dict[str, Any] = {
        "met": met,
        "count": len(counted),
        "min_trials": s["min_trials"],
        "min_days": s["min_days"],
        "counted": counted,
        "not_counted": not_counted,
        "episode_start": episode_start.isoformat(),
        "episode_basis": episode_basis,
        "earlier_left_out": [v for v in not_counted if v["why"].startswith("earlier episode")],
        "text_matched": any(v["text_matched"] for v in counted + not_counted),
    }
    # (only then: the explanation of every other call binds what it always did)
    if undecided:
        summary["undecided_trials"] = undecided
    if met is None and unread_refs:
        summary["unread_records"] = unread_refs
    left = Open(
        responded, unread["could_add"], unread["add_refs"], unread["could_remove"], unread["remove_refs"]
    )
    return summary, left


def _unread_records(
    facts: Facts,
    s: dict[str, Any],
    counted: list[dict[str, Any]],
    undecided: list[dict[str, Any]],
    earlier: set[str] | None,
) -> dict[str, Any]:
    """What the antidepressant records whose status or dates could not be read could do: only
    their drug was read. One of a drug no counted (or dose-undecided) trial has could be one more
    adequate failed trial (``could_add``); one of a counted drug cannot add a trial but could take
    that one away — the course still going on, a stop for intolerance, a later score showing a
    response (``could_remove``). References by what they could do, and all of them."""
    out: dict[str, Any] = {"could_add": set(), "could_remove": set(), "add_refs": [], "remove_refs": []}
    refs = facts.unreadable_medications_in(s["vs"])
    unknown = facts.unidentified_uses()
    out["any_refs"] = refs + unknown
    # a record whose drug is not known could be any antidepressant: one more trial of a drug not
    # counted, or a record of a counted one (each record at most one trial, one way or the other)
    for n, r in enumerate(unknown):
        out["could_add"].add(f"(unidentified {n})")
        out["add_refs"].append(r)
        if counted:
            out["could_remove"].add(f"(unidentified {n})")
            out["remove_refs"].append(r)
    if not refs:
        return out
    wanted = set(refs)
    have = {v["ingredient"] for v in counted}
    pending = {v["ingredient"] for v in undecided}
    for r, drug in facts.malformed_meds:
        if r not in wanted:
            continue
        for ing in sorted(facts.t.drug_in(drug, s["vs"])):
            if ing in have:
                out["could_remove"].add(ing)
                if r not in out["remove_refs"]:
                    out["remove_refs"].append(r)
            elif ing not in pending:
                out["could_add"].add(ing)
                if r not in out["add_refs"]:
                    out["add_refs"].append(r)
    return out


def _last_remission(
    facts: Facts, s: dict[str, Any], unread: Sequence[tuple[date, str]] = (), unread_value: float = 0.0
) -> dict[str, Any] | None:
    """The latest stretch of >= ``remission_days`` without a depressive episode, if the record shows one.

    Evidence: consecutive scores below the remission threshold spanning that long, or a stretch with
    no antidepressant that has only remission scores in it (or, when ``untreated_gap_days`` long,
    no scores at all). Returns its end (the current episode's earliest start), a sentence, and
    whether it is a stretch off antidepressants (a record not read might fall in it). ``unread``:
    scores that could not be read, (day, kind), taken as ``unread_value`` (what they could be).
    """
    thresholds = s["remission_below"] or {}
    scores = sorted(
        [
            *(
                (o.when.date(), kind, o.value)
                for kind in thresholds
                for o in facts.series(kind)
                if o.value is not None and o.when.date() <= facts.today
            ),
            *((day, kind, unread_value) for day, kind in unread),
        ]
    )
    found: list[tuple[date, date, str, bool]] = []  # (start, end, why, off antidepressants)
    run: list[tuple[date, str, float]] = []
    for day, kind, value in [*scores, (facts.today, "", float("inf"))]:
        if kind and value < thresholds[kind]:
            run.append((day, kind, value))
            continue
        if run and (run[-1][0] - run[0][0]).days >= s["remission_days"]:
            label = run[0][1].upper().replace("PHQ9", "PHQ-9")
            found.append(
                (
                    run[0][0],
                    run[-1][0],
                    f"remission from {run[0][0].isoformat()} to {run[-1][0].isoformat()} "
                    f"({label} below {num(thresholds[run[0][1]])} throughout)",
                    False,
                )
            )
        run = []
    # stretches without any antidepressant
    trials = sorted(facts.trials(s["vs"]), key=lambda t: t.start)
    covered_until: date | None = None
    # each stretch off antidepressants ends at the next trial, or (after the last) at the first
    # score showing depression again, or today
    ends = [t.start for t in trials[1:]] + [facts.today] if trials else []  # no trials: no stretch
    for t, next_start in zip(trials, ends, strict=True):
        covered_until = max(covered_until or t.end, t.end)
        if any(u.start <= covered_until < u.end for u in trials if u is not t):
            continue
        depressed = [d for d, k, v in scores if covered_until < d <= next_start and v >= thresholds[k]]
        gap_start, gap_end = covered_until, min([next_start] + depressed)
        if (gap_end - gap_start).days >= s["remission_days"]:
            inside = [(d, k, v) for d, k, v in scores if gap_start < d < gap_end]
            days = (gap_end - gap_start).days
            if inside and all(v < thresholds[k] for _, k, v in inside):
                found.append(
                    (
                        gap_start,
                        gap_end,
                        f"{days // 30} months off antidepressants in remission "
                        f"({gap_start.isoformat()} to {gap_end.isoformat()})",
                        True,
                    )
                )
            elif not inside and days >= s["untreated_gap_days"]:
                found.append(
                    (
                        gap_start,
                        gap_end,
                        f"{days // 30} months without antidepressants or depression "
                        f"scores ({gap_start.isoformat()} to {gap_end.isoformat()})",
                        True,
                    )
                )
    if not found:
        return None
    start, end, why, off = max(found, key=lambda f: f[1])
    return {"start": start, "end": end, "why": why, "off": off}


def _trial_view(facts: Facts, t: Trial) -> dict[str, Any]:
    return {
        "ingredient": t.ingredient,
        "name": facts.t.display(t.ingredient),
        "start": t.start.isoformat(),
        "end": None if t.ongoing else t.end.isoformat(),
        "weeks": t.weeks,
        "days": t.days,
        "ongoing": t.ongoing,
        "max_daily_dose": num(t.max_daily_dose),
        "refs": list(t.refs),
        "text_matched": t.text_matched,
    }
