"""Prefetch keys that could not be read make the facts resting on them unknown, never "absent".

In fetch mode a key can miss the call's deadline or fail (``reading/prefetch.py``); the answer is
then partial. A predicate that reads a key that was not read cannot conclude from it:

* a *false* answer ("no MAOI", "no pregnancy status") rests on the absence of records, which an
  unread key does not show: it becomes unknown;
* an unknown answer is kept unknown, but asks for the unread data instead ("body weight" would
  suggest measuring what may well be on the server);
* a *true* answer stays true only for predicates whose truth is a record found (an MAOI in the
  dispenses is an MAOI whatever the unread orders say); a true answer that rests on absences too
  (TRD counting, "first session", the pathway, a course's response) becomes unknown.

Unknown results carry one :class:`~.predicates.Missing` per unread key, ``not-read:<key>``, whose
words come from ``rules/common.yaml`` ``data_needs``; the data-gap card lists them with the checks
that needed them. Which keys each predicate reads is declared here, next to nothing else.
"""

from __future__ import annotations

from typing import Any

from ..services import SEPARATELY_RETRIEVED_KINDS

MEDICATION_KEYS = (
    "medicationRequests",
    "medicationStatements",
    "medicationDispenses",
    "medicationAdministrations",
)
ADMINISTRATIONS = ("medicationAdministrations",)

#: The keys each predicate reads. Every predicate is declared here, in OBSERVATION_PREDICATES or in
#: CONTEXT_ONLY (tests/test_fetch_partial.py checks it); one declared nowhere is taken to read every
#: key, so forgetting to declare it can cost an answer, never a safety check.
KEYS: dict[str, tuple[str, ...]] = {
    "condition": ("conditions",),
    "procedure": ("procedures",),
    "allergy": ("allergies",),
    "active_medication": MEDICATION_KEYS,
    "diazepam_equivalent": MEDICATION_KEYS,
    "concurrent_medication": MEDICATION_KEYS,
    "ketamine_course": MEDICATION_KEYS,
    "first_session": ADMINISTRATIONS,
    "session_frequency": ADMINISTRATIONS,
    "course": (*ADMINISTRATIONS, "assessments"),
    "trd": (*MEDICATION_KEYS, "conditions", "assessments"),
    "pathway_steps": (*MEDICATION_KEYS, "procedures"),
    "dose_per_kg": ("vitalSigns",),
}
#: Predicates that read only the hook's context (draft orders, hook, jurisdiction), the Patient
#: (always read: without it the call is a 412), the record's own reading report, or other rules.
CONTEXT_ONLY = frozenset(
    {
        "age",
        "sex",
        "deceased",
        "hook",
        "jurisdiction",
        "order",
        "dose_mg",
        "infusion_minutes",
        "order_route_unknown",
        "text_matched_order",
        "unidentified_order",
        "record_read",
        "unreadable_resources",
        "all",
        "any",
        "not",
        "assess",
        "possibly",
        "ref",
    }
)
#: Observation predicates read the key of their ``kind``.
OBSERVATION_PREDICATES = frozenset({"observation", "has_observation"})
#: Predicates whose *true* rests only on records found: kept true when other records are unread.
TRUE_IS_A_FINDING = frozenset(
    {
        "condition",
        "procedure",
        "allergy",
        "active_medication",
        "diazepam_equivalent",
        "concurrent_medication",
        "ketamine_course",
        "session_frequency",
        "dose_per_kg",
        "observation",
        "has_observation",
    }
)


def key_of_kind(kind: str) -> str:
    """The prefetch key an observation kind is retrieved by (``services.PREFETCH``)."""
    if kind == "pregnancy_status":
        return "pregnancyStatus"
    return "vitalSigns" if kind in SEPARATELY_RETRIEVED_KINDS else "assessments"


def keys_read(name: str, args: dict[str, Any]) -> tuple[str, ...] | None:
    """The keys a predicate reads; None for one declared nowhere (it may read any key)."""
    if name in OBSERVATION_PREDICATES:
        return (key_of_kind(str(args.get("kind"))),)
    if name in CONTEXT_ONLY:
        return ()
    return KEYS.get(name)


def unread_keys(name: str, args: dict[str, Any], value: bool | None, unread: dict[str, str]) -> list[str]:
    """The unread keys that make this predicate's ``value`` unknown (empty: the value stands)."""
    if not unread:
        return []
    keys = keys_read(name, args)
    hit = list(unread) if keys is None else [k for k in keys if k in unread]
    if not hit or (value is True and name in TRUE_IS_A_FINDING):
        return []
    return hit
