"""What predicates bind for card templates: drugs, observations and conditions as clinicians write them."""

from __future__ import annotations

from typing import Any

from ...reading.facts import MedUse, ObservationFact
from ...reading.terminology import concept_name
from .core import Env, Missing

UNRESOLVED_MEDICATION = Missing(
    "unresolved-medication", "the drug of current medication records whose Medication could not be read"
)


def unreadable_missing(env: Env, vs: str, refs: list[str], what: str = "record") -> Missing:
    """A relevant record that could not be read: the check cannot say 'absent'. The label names
    the kind of record and the elements that could not be read ("a readable record of MAOIs (a
    MedicationRequest with authoredOn not readable)"), never an id or a value: the explanation's
    evidence and the unreadable-entries card point at the record."""
    title = env.facts.t.valuesets[vs].title
    if what != "record":  # "allergy record of ketamine or esketamine": the title reads as words
        title = title.lower()
    return Missing("unreadable-record", f"a readable {what} of {title} ({unreadable_why(env, refs)})")


def unreadable_why(env: Env, refs: list[str]) -> str:
    """Which records and elements: "a MedicationRequest with authoredOn not readable", "2 Conditions
    with clinicalStatus, code not readable" (kinds from the references, elements from the record's
    problems with them)."""
    wanted = set(refs)
    elements: list[str] = []
    for p in env.facts.record.problems:
        if p.resource in wanted and p.partial:
            element = p.message.split(": ", 1)[0]
            if element not in elements:
                elements.append(element)
    which = plural_kinds(refs)
    if not elements:
        return f"{which} not readable"
    shown = ", ".join(elements[:3]) + (" …" if len(elements) > 3 else "")
    return f"{which} with {shown} not readable"


def unidentified_why(refs: list[str]) -> str:
    """Which records name a drug that could not be identified: "a MedicationStatement whose
    medication could not be identified", "2 MedicationRequests …" (kinds from the references)."""
    return f"{plural_kinds(refs)} whose medication could not be identified"


def plural_kinds(refs: list[str]) -> str:
    """ "an Observation", "2 Conditions and a MedicationRequest": the kinds of the references."""
    kinds: dict[str, int] = {}
    for r in refs:
        kind = r.split("/", 1)[0].split(" (", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return " and ".join(
        (f"an {k}" if k[:1] in "AEIOU" else f"a {k}") if n == 1 else f"{n} {k}s" for k, n in kinds.items()
    )


def condition_view(c: Any) -> dict[str, Any]:
    return {
        "text": concept_name(c.concept, once(c.text)) or "condition (no name recorded)",
        "active": c.active,
        "onset": c.onset.isoformat() if c.onset else None,
        "ref": c.ref,
    }


# How clinicians write a measured value, by unit: blood pressure, rates and saturation in whole
# numbers, weight to 0.1 kg; anything else to at most 2 decimals (3 significant digits above 10).
WHOLE_UNITS = {"mm[hg]", "mmhg", "/min", "%", "{beats}/min", "{breaths}/min", "beats/min", "breaths/min"}
TENTH_UNITS = {"kg", "cm", "[degf]", "cel"}


def clinical_number(value: float | None, unit: str | None = None) -> int | float | None:
    """98.32605215136181 kg → 98.3; 151.86292759932016 mmHg → 152."""
    if value is None:
        return None
    u = (unit or "").strip().lower()
    if u in WHOLE_UNITS:
        return int(round(value))
    if u in TENTH_UNITS:
        return num(round(value, 1))
    return num(round(value, 1) if abs(value) >= 10 else round(value, 2))


def once(text: str) -> str:
    """ "Pregnant Pregnant" → "Pregnant": a concept's text and display joined when they are equal."""
    words = (text or "").split()
    half = len(words) // 2
    if words and len(words) % 2 == 0 and words[:half] == words[half:]:
        return " ".join(words[:half])
    return text


def obs_view(o: ObservationFact) -> dict[str, Any]:
    return {
        "value": clinical_number(o.value, o.unit),
        "unit": o.unit,
        "date": o.when.date().isoformat(),
        "text": o.name or once(o.text),
        "ref": o.ref,
        "preliminary": o.preliminary,
        "from_text": o.from_text,  # read from a panel written out as text ("168/102 mmHg")
    }


def num(value: float | None) -> int | float | None:
    """56.0 → 56, so card text reads like a person wrote it."""
    if value is None:
        return None
    return int(value) if float(value).is_integer() else round(value, 2)


def drug_name(env: Env, u: MedUse) -> str:
    """What the record calls the drug, once, inline or referenced (``MedicationResolver.name_of``),
    else what identified it. (The matcher's text joins text and displays, which repeats the name
    when they are equal.)"""
    name = env.facts.medications.name_of(u.resource) if isinstance(u.resource, dict) else ""
    return name[:80] or u.describe()


def med_view(env: Env, u: MedUse) -> dict[str, Any]:
    """What templates see of a medication record; one view per record and request (read-only:
    several rules' bindings share it)."""
    hit = env.views.get(id(u))
    if hit is not None and hit[0] is u:
        return hit[1]
    t = env.facts.t
    view = env.views[id(u)] = (
        u,
        {
            "name": drug_name(env, u),
            "ingredients": ", ".join(sorted(t.display(i) for i in u.drug.ingredients)),
            "dose": clinical_number(u.dose, u.dose_unit),
            "dose_unit": u.dose_unit,
            "route": u.route,
            "infusion_minutes": u.infusion_minutes,
            "matched_by": u.drug.matched_by,
            "ref": u.ref,
            "start": u.start.isoformat() if u.start else None,
            "ordered_together": u.kind == "draft",
        },
    )
    return view[1]
