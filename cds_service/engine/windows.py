"""How far back the rules look at vital signs, so that fetch mode asks only for that (issue 8 item 7).

Every rule that reads a vital sign asks for a recent one: the blood pressure of today, a weight of
the last 30 days. Fetching a long record's whole vital-sign history (thousands of Observations,
most of the fetch time of a large record) buys nothing, so the service's own fetch of
``vitalSigns`` adds ``date=ge<start>`` (a CDS Hooks query-subset date parameter) where ``start`` is
the longest window any rule uses before the evaluation time, plus a day. The window is derived
from the compiled rule set, site parameters included: if any predicate reads a vital sign without
a window, or in a way this module does not know, nothing is narrowed. The templates discovery
serves are unchanged (CDS Hooks 2.0.1 tokens cannot name a date); history that TRD counting or
washouts need (medications, scores) is never narrowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from ..services import SEPARATELY_RETRIEVED_KINDS
from .loader import RuleSet
from .predicates import Leaf, Node
from .predicates.logic import All, Any_, Assess, Not

VITAL_KINDS = SEPARATELY_RETRIEVED_KINDS - {"pregnancy_status"}
MARGIN_DAYS = 1  # time zones and the day boundary: ask for a day more than the rules look at
_cache: dict[str, float | None] = {}


def _leaves(node: Node) -> Iterator[Leaf]:
    if isinstance(node, Leaf):
        yield node
    elif isinstance(node, All | Any_):
        for child in node.children:
            yield from _leaves(child)
    elif isinstance(node, Not | Assess):
        yield from _leaves(node.child)
    # Ref: its definition is walked once from RuleSet.definitions


def _mentions_vital(value: Any) -> bool:
    if isinstance(value, str):
        return value in VITAL_KINDS
    if isinstance(value, list | tuple | set | frozenset):
        return any(_mentions_vital(v) for v in value)
    if isinstance(value, dict):
        return any(_mentions_vital(v) for v in value.values())
    return False


def _window(leaf: Leaf) -> float | None:
    """Days back this leaf reads vital signs: 0 if it reads none, inf if without a window."""
    a = leaf.args
    if leaf.name == "observation" and a.get("kind") in VITAL_KINDS:
        if a.get("within_hours") is not None:
            return float(a["within_hours"]) / 24
        return float(a["within_days"]) if a.get("within_days") is not None else math.inf
    if leaf.name == "has_observation" and a.get("kind") in VITAL_KINDS:
        return float(a["within"]) if a.get("within") is not None else math.inf
    if leaf.name == "dose_per_kg":
        return float(a["within"]) if a.get("within") is not None else math.inf
    if leaf.name in ("observation", "has_observation"):
        return 0.0
    return math.inf if _mentions_vital(a) else 0.0


def vital_signs_window(ruleset: RuleSet) -> float | None:
    """The longest window (days) any rule reads vital signs over; None when unbounded."""
    if ruleset.version in _cache:
        return _cache[ruleset.version]
    roots = [r.when for r in ruleset.rules] + list(ruleset.definitions.values())
    longest = max((_window(leaf) for root in roots for leaf in _leaves(root)), default=0.0)
    result = None if math.isinf(longest) else longest
    if len(_cache) > 32:
        _cache.clear()
    _cache[ruleset.version] = result
    return result


def fetch_narrowing(ruleset: RuleSet, now: datetime) -> dict[str, str]:
    """Extra query parameters per prefetch key for the service's own fetch (never for discovery)."""
    days = vital_signs_window(ruleset)
    if days is None:
        return {}
    start = (now - timedelta(days=days + MARGIN_DAYS)).date()
    return {"vitalSigns": f"date=ge{start.isoformat()}"}
