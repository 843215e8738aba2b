"""How far back the rules read medication records, per value set: the medication horizon.

The interaction rules ask whether a drug is in effect today, ``grace_days`` after its end (an MAOI's
14-day washout, a benzodiazepine's 7 days), or given within ``within_days`` (a ketamine course in
progress); a gabapentin dispense that ran out three years ago can change none of their answers.
TRD counting, the pathway and course tracking read their drugs' whole history. This module derives,
from the compiled rule set (site parameters included, as :mod:`.windows` does for observations),
the longest window each medication value set is read with, and the value sets read over the whole
history; the medication facts then leave out of their uses the records no rule can need, once
validated (:mod:`~..reading.med_horizon`: validation and its reports are as for any record).

Unknown means the whole history: a predicate that reads medication records and is not known here
(declared nowhere in :mod:`.unread`, or reading them in a way not listed below) turns the horizon
off altogether, and a value set a history predicate names is read over the whole history.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ..reading.med_horizon import Horizon
from .loader import RuleSet
from .predicates import Leaf, Node
from .predicates.logic import All, Any_, Assess, Not, Ref
from .unread import MEDICATION_KEYS, keys_read

#: Predicates that read medication records of ``vs`` within a window: the arguments (compiled
#: names) whose largest value is that window in days (a grace period after the end, or how
#: recent an administration). Each also reads the records in effect today (a window of a day).
WINDOWED: dict[str, tuple[str, ...]] = {
    "active_medication": ("grace",),
    "diazepam_equivalent": ("grace",),
    "ketamine_course": ("within",),
    "concurrent_medication": ("grace", "within"),  # its ``order_vs``: the draft orders alone
}
#: Predicates that read the medication value sets they name over the whole history (trials,
#: sessions since the first, the current course however long).
HISTORY = frozenset({"trd", "pathway_steps", "first_session", "session_frequency", "course"})

_cache: dict[str, Horizon | None] = {}
_OFF = object()  # a node this module does not know


def _leaves(node: Node) -> Iterator[Leaf | object]:
    if isinstance(node, Leaf):
        yield node
    elif isinstance(node, All | Any_):
        for child in node.children:
            yield from _leaves(child)
    elif isinstance(node, Not | Assess):
        yield from _leaves(node.child)
    elif not isinstance(node, Ref):  # a Ref's definition is walked from RuleSet.definitions
        yield _OFF


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)


def _days(values: list[Any]) -> float:
    """The window of a windowed leaf: its largest argument, at least a day; inf when not a number."""
    longest = 1.0
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
            return math.inf
        longest = max(longest, float(v))
    return longest


def medication_horizon(ruleset: RuleSet) -> Horizon | None:
    """The rule set's medication horizon; None when some rule reads medication records in a
    way not known here (then every record is kept)."""
    key = ruleset.fingerprint
    if key in _cache:
        return _cache[key]
    medication_sets = {
        vs_id for vs_id, vs in ruleset.terminology.valuesets.items() if vs.kind == "medication"
    }
    windows: dict[str, float] = {}
    history: set[str] = set()
    horizon: Horizon | None = None
    roots = [r.when for r in ruleset.rules] + list(ruleset.definitions.values())
    for leaf in (leaf for root in roots for leaf in _leaves(root)):
        if not isinstance(leaf, Leaf):
            break
        name, args = leaf.name, leaf.args
        if name in WINDOWED:
            vs = args.get("vs")
            days = _days([args.get(k) for k in WINDOWED[name]])
            if vs not in medication_sets:
                break
            if math.isinf(days):
                history.add(vs)
            else:
                windows[vs] = max(windows.get(vs, 0.0), days)
            continue
        keys = keys_read(name, args)
        if keys is not None and not set(keys) & set(MEDICATION_KEYS):
            continue  # reads no medication record (the draft orders are the context)
        if name not in HISTORY:
            break  # reads medication records in a way not known here
        history.update(s for s in _strings(args) if s in medication_sets)
    else:
        horizon = Horizon({vs: d for vs, d in windows.items() if vs not in history}, history)
    if len(_cache) > 32:
        _cache.clear()
    _cache[key] = horizon
    return horizon
