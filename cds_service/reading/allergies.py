"""Allergies and intolerances as facts: what the patient reacts to, how sure and how bad.

Read from ``AllergyIntolerance``: the substance (``code``, coded or text only, and each reaction's
``substance``), matched to the drug terminology the same way as a medication (so "Ketalar", an
RxNorm ketamine product or the ingredient code all count); clinical status, verification status,
criticality, type, category and the reactions' manifestations and severity.

What is kept: refuted and entered-in-error records are dropped; an *unconfirmed* record is kept and
labelled (a suspected allergy is a safety signal); a record without a clinical status counts as
active and says so. Inactive and resolved records are kept for rules that ask for them. A record of a
relevant substance that cannot be read makes the question unknown, never "no allergy".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from .elements import Reads
from .raw import as_dict, as_list
from .record import PatientRecord, ref
from .terminology import DrugMatch, Terminology, answer_text, concept_text

CLINICAL_STATUSES = ("active", "inactive", "resolved")
DROPPED_VERIFICATION = ("refuted", "entered-in-error")
READS = Reads(
    "AllergyIntolerance",
    "code",
    "clinicalStatus",
    "verificationStatus",
    "criticality",
    "type",
    "category",
    "recordedDate",
    "reaction.substance",
    "reaction.manifestation",
    "reaction.severity",
)


@dataclass(frozen=True)
class AllergyFact:
    ref: str
    substance: str  # text of the substance as recorded (code text/display, or reaction substance)
    drug: DrugMatch  # what the substance was recognised as (empty if not a known drug)
    clinical_status: str | None  # active | inactive | resolved | None (not recorded)
    verification: str | None  # unconfirmed | confirmed | None (refuted/entered-in-error are dropped)
    criticality: str | None  # low | high | unable-to-assess | None
    type: str | None  # allergy | intolerance | None
    categories: tuple[str, ...] = ()
    reactions: tuple[str, ...] = ()  # manifestation texts
    severity: str | None = None  # the most severe reaction severity recorded (mild/moderate/severe)
    recorded: date | None = None

    @property
    def active(self) -> bool:
        """Active, or no clinical status recorded (counted as active: the safe reading)."""
        return self.clinical_status in (None, "active")

    def view(self, terminology: Terminology) -> dict[str, Any]:
        """What a card template sees."""
        return {
            "substance": self.substance or "(substance not named)",
            "ingredients": ", ".join(sorted(terminology.display(i) for i in self.drug.ingredients)),
            "matched_by": self.drug.matched_by,
            "clinical_status": self.clinical_status or "not recorded",
            "verification": self.verification or "not recorded",
            "unconfirmed": self.verification == "unconfirmed",
            "criticality": self.criticality or "not recorded",
            "type": self.type or "allergy or intolerance",
            "reactions": list(self.reactions),
            "severity": self.severity,
            "recorded": self.recorded.isoformat() if self.recorded else None,
            "ref": self.ref,
        }


@dataclass
class Allergies:
    """Every readable allergy of the record, and the relevant ones that could not be read."""

    facts: list[AllergyFact] = field(default_factory=list)
    unreadable: list[tuple[str, DrugMatch]] = field(default_factory=list)
    recorded: int = 0  # AllergyIntolerance resources in the record (any status)

    def to(
        self,
        terminology: Terminology,
        valueset: str,
        *,
        include_inactive: bool = False,
        confirmed_only: bool = False,
        criticality: tuple[str, ...] = (),
    ) -> list[AllergyFact]:
        """Allergies to a drug of a medication value set."""
        out = []
        for a in self.facts:
            if not terminology.drug_in(a.drug, valueset):
                continue
            if not include_inactive and not a.active:
                continue
            if confirmed_only and a.verification != "confirmed":
                continue
            if criticality and a.criticality not in criticality:
                continue
            out.append(a)
        return out

    def unreadable_to(self, terminology: Terminology, valueset: str) -> list[str]:
        return [r for r, drug in self.unreadable if terminology.drug_in(drug, valueset)]


def read_allergies(record: PatientRecord, terminology: Terminology) -> Allergies:
    out = Allergies()
    for res in record.resources("AllergyIntolerance"):
        out.recorded += 1
        verification = _code(res.get("verificationStatus"))
        if verification in DROPPED_VERIFICATION:
            continue
        concepts = [res.get("code")] + [as_dict(r).get("substance") for r in as_list(res.get("reaction"))]
        drug = DrugMatch()
        substance = ""  # what matching reads: the text and every display
        name = ""  # what a card quotes: the text, else each display once
        for concept in concepts:
            if not isinstance(concept, dict):
                continue
            substance = substance or concept_text(concept)
            name = name or answer_text(concept)
            match = terminology.match_drug(concept)
            if match.ingredients:
                drug = DrugMatch(
                    drug.ingredients | match.ingredients,
                    drug.products | match.products,
                    drug.form or match.form,
                    drug.matched_by if drug.matched_by == "code" else match.matched_by,
                    substance,
                )
        if not record.readable(res, READS):
            if drug.ingredients:
                out.unreadable.append((ref(res), drug))
            continue
        clinical = _code(res.get("clinicalStatus"))
        reactions = []
        severities = []
        for reaction in as_list(res.get("reaction")):
            reaction = as_dict(reaction)
            for m in as_list(reaction.get("manifestation")):
                text = answer_text(m)
                if text:
                    reactions.append(text)
            if isinstance(reaction.get("severity"), str):
                severities.append(reaction["severity"])
        categories = tuple(c for c in as_list(res.get("category")) if isinstance(c, str))
        out.facts.append(
            AllergyFact(
                ref=ref(res),
                substance=name[:120],
                drug=drug,
                clinical_status=clinical if clinical in CLINICAL_STATUSES else None,
                verification=verification if verification in ("unconfirmed", "confirmed") else None,
                criticality=_str(res.get("criticality")),
                type=_str(res.get("type")),
                categories=categories,
                reactions=tuple(dict.fromkeys(reactions))[:5],
                severity=next((s for s in ("severe", "moderate", "mild") if s in severities), None),
                recorded=_date(res.get("recordedDate")),
            )
        )
    return out


def _code(concept: Any) -> str | None:
    for c in as_list(as_dict(concept).get("coding")):
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            return c["code"]
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _date(value: Any) -> date | None:
    if isinstance(value, str) and len(value) >= 10:
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None
