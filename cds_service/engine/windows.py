"""How far back the rules look at observations, so that fetch mode asks only for that (issue 8 item 7).

Every rule that reads a vital sign asks for a recent one: the blood pressure of today, a weight of
the last 30 days. The screens (C-SSRS, PHQ-9 item 9, hCG) are read within 30 days too; only TRD
counting and course tracking read scores (PHQ-9, MADRS) over the whole history. Fetching a long
record's whole vital-sign and survey history (thousands of Observations, most of the fetch time of
a large record) buys nothing, so the service's own fetch adds ``date=ge<start>`` (a CDS Hooks
query-subset date parameter), ``start`` being the longest window any rule uses before the
evaluation time, plus a day:

* ``vitalSigns``: one search, narrowed, and one for those without effective[x] (``date`` matches
  effective[x] only; the reading layer dates such a reading by ``issued``);
* ``assessments``: the template's search (every code), narrowed, the same for those without
  effective[x], and a search not narrowed for the codes of the kinds read over the whole history;
* ``pregnancyStatus``: as ``vitalSigns`` (the pregnancy check reads a status of the last 30 days).

The windows are derived from the compiled rule set, site parameters included. Which keys a
predicate reads is ``engine/unread.py``'s declaration: one that reads a key and is not known here
(an observation predicate with its window, ``dose_per_kg``, or a predicate that names the kinds it
reads over the history, :data:`HISTORY_KINDS_IN`), or one declared nowhere, turns the narrowing of
that key off; so does a predicate that names a kind it is not declared to read. The templates
discovery serves are unchanged (CDS Hooks 2.0.1 tokens cannot name a date); medication history is
never narrowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..reading.prefetch import Narrowed
from ..services import SEPARATELY_RETRIEVED_KINDS, assessment_kinds, code_tokens, kind_codes
from .loader import RuleSet
from .predicates import Leaf, Node
from .predicates.logic import All, Any_, Assess, Not
from .unread import OBSERVATION_PREDICATES, key_of_kind, keys_read

VITAL_KINDS = SEPARATELY_RETRIEVED_KINDS - {"pregnancy_status"}
NARROWED_KEYS = ("vitalSigns", "assessments", "pregnancyStatus")
#: The searchable observations a ``date=ge`` search cannot return: no effective[x] at all (FHIR
#: ``:missing``, defined for every search parameter). A server that refuses the modifier makes the key
#: not read (said in a card); one that ignores it returns the whole history: neither loses a reading.
UNDATED = "date:missing=true"
MARGIN_DAYS = 1  # time zones and the day boundary: ask for a day more than the rules look at
#: Predicates that read the observation kinds named in these compiled arguments, over the whole
#: history (trd: trials' score changes and remission; course: baseline and response).
HISTORY_KINDS_IN: dict[str, tuple[str, ...]] = {
    "trd": ("score_kinds", "remission_below"),
    "course": ("kinds",),
}


@dataclass(frozen=True)
class KeyWindow:
    """What the rules read of one key: ``days`` back (None: some rule reads it without a window,
    nothing is narrowed), and the kinds read over the whole history (fetched without a date)."""

    days: float | None
    history: tuple[str, ...] = ()


_cache: dict[str, dict[str, KeyWindow]] = {}


def _leaves(node: Node) -> Iterator[Leaf]:
    if isinstance(node, Leaf):
        yield node
    elif isinstance(node, All | Any_):
        for child in node.children:
            yield from _leaves(child)
    elif isinstance(node, Not | Assess):
        yield from _leaves(node.child)
    # Ref: its definition is walked once from RuleSet.definitions


def _strings(value: Any) -> Iterator[str]:
    """Every string in a predicate's arguments, dict keys included (``remission_below: {phq9: 5}``)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)


def _days(value: Any, per: float = 1.0) -> float:
    return math.inf if value is None else float(value) / per


def _reads(leaf: Leaf, kinds_of: dict[str, frozenset[str]]) -> Iterator[tuple[str, str | None, float]]:
    """``(key, kind, days back)`` for what a leaf reads of the narrowed keys; kind None: any kind."""
    a = leaf.args
    if leaf.name in OBSERVATION_PREDICATES:
        kind = str(a.get("kind"))
        if a.get("within_hours") is not None:
            days = _days(a["within_hours"], 24)
        else:
            days = _days(a.get("within_days", a.get("within")))
        yield key_of_kind(kind), kind, days
        return
    if leaf.name == "dose_per_kg":
        yield "vitalSigns", "weight", _days(a.get("within"))
        return
    declared = keys_read(leaf.name, a)
    named = set(_strings(a))
    history = {k for field in HISTORY_KINDS_IN.get(leaf.name, ()) for k in _strings(a.get(field))}
    for key in NARROWED_KEYS:
        if declared is not None and key not in declared:
            if named & kinds_of[key]:
                yield key, None, math.inf  # names a kind of a key it is not declared to read
        elif leaf.name in HISTORY_KINDS_IN:
            for kind in sorted(history & kinds_of[key]):
                yield key, kind, math.inf
        else:
            yield key, None, math.inf


def key_windows(ruleset: RuleSet) -> dict[str, KeyWindow]:
    """What the rules read of each narrowed key (see :class:`KeyWindow`)."""
    hit = _cache.get(ruleset.version)  # (another thread may clear the cache between two looks)
    if hit is not None:
        return hit
    kinds_of = {
        "vitalSigns": frozenset(VITAL_KINDS),
        "assessments": frozenset(assessment_kinds(ruleset.observation_kinds)),
        "pregnancyStatus": frozenset({"pregnancy_status"}),
    }
    roots = [r.when for r in ruleset.rules] + list(ruleset.definitions.values())
    reads = [read for root in roots for leaf in _leaves(root) for read in _reads(leaf, kinds_of)]
    result = {key: _window(key, [(k, d) for r_key, k, d in reads if r_key == key]) for key in NARROWED_KEYS}
    if len(_cache) > 32:
        _cache.clear()
    _cache[ruleset.version] = result
    return result


def _window(key: str, reads: Iterable[tuple[str | None, float]]) -> KeyWindow:
    days, history = 0.0, set()
    for kind, d in reads:
        if math.isinf(d):
            if kind is None or key != "assessments":  # vital signs are asked for by category only
                return KeyWindow(None)
            history.add(kind)
        else:
            days = max(days, d)
    return KeyWindow(days, tuple(sorted(history)))


def vital_signs_window(ruleset: RuleSet) -> float | None:
    """The longest window (days) any rule reads vital signs over; None when unbounded."""
    return key_windows(ruleset)["vitalSigns"].days


#: (rule set, key) → the search for the kinds that key's rules read over the whole history
#: (codes only: no date, nothing of a patient); the dated searches are made per call
_history_searches: dict[tuple[str, str], Narrowed | None] = {}
MAX_HISTORY_SEARCHES = 64
_ABSENT = object()


def fetch_narrowing(ruleset: RuleSet, now: datetime) -> dict[str, tuple[Narrowed, ...]]:
    """The searches of the service's own fetch per narrowed key (never for discovery)."""
    out: dict[str, tuple[Narrowed, ...]] = {}
    for key, window in key_windows(ruleset).items():
        if window.days is None:
            continue
        start = (now - timedelta(days=window.days + MARGIN_DAYS)).date()
        # `date` searches effective[x] only; the reading layer dates an observation by `issued`
        # when it has no effective[x] (and reports an undated one): those are asked for apart.
        parts = [Narrowed(params=f"date=ge{start.isoformat()}"), Narrowed(params=UNDATED)]
        history = _history_search(ruleset, key, window)
        if history is not None:
            parts.append(history)
        out[key] = tuple(parts)
    return out


def _history_search(ruleset: RuleSet, key: str, window: KeyWindow) -> Narrowed | None:
    """The key's search by the codes of the kinds read over the whole history, built once per
    rule set (the code tokens of every such kind: the costly part of the narrowing)."""
    cache_key = (ruleset.fingerprint, key)
    hit = _history_searches.get(cache_key, _ABSENT)  # None: the key has no such kinds
    if hit is not _ABSENT:
        return hit  # type: ignore[return-value]
    codes = kind_codes(ruleset.observation_kinds, window.history)
    search = Narrowed(codes=code_tokens(codes)) if codes else None
    if len(_history_searches) >= MAX_HISTORY_SEARCHES:
        _history_searches.clear()
    _history_searches[cache_key] = search
    return search
