"""Condition facts: a Condition's code, status and dates, validated only when a rule reads them."""

from __future__ import annotations

from datetime import date
from typing import Any, NamedTuple

from .dates import parse_date
from .elements import Reads
from .lazy import lazy
from .raw import as_list
from .record import PatientRecord, ref
from .terminology import Terminology, codings, concept_text

CONDITION = Reads(
    "Condition", "code", "clinicalStatus", "verificationStatus", "onset[x]", "abatement[x]", "recordedDate"
)
# a Condition's statuses read on their own: one recorded in error is left out, and one resolved
# is not current, whatever else in it cannot be read (only a status that was read decides that)
VERIFICATION = Reads("Condition", "verificationStatus")
CLINICAL = Reads("Condition", "clinicalStatus")
NOT_RECORDED = ("refuted", "entered-in-error")
ACTIVE = ("active", "recurrence", "relapse")


class ConditionFact(NamedTuple):
    """A readable Condition (a named tuple: made in one step, where a frozen dataclass sets each
    field through ``object.__setattr__``)."""

    ref: str
    concept: dict[str, Any]
    text: str
    active: bool
    onset: date | None
    abatement: date | None
    recorded: date | None


class ConditionFacts:
    """The Condition half of :class:`~.facts.Facts` (a mixin: it uses the record and terminology)."""

    record: PatientRecord
    t: Terminology
    today: date
    malformed_conditions: list[dict[str, Any]]
    _condition_facts: dict[int, ConditionFact | None]
    _conditions_by_valueset: dict[tuple[str, bool], list[ConditionFact]]  # this request's memo

    # Conditions are matched on their raw codes first and validated only when a rule reads them:
    # most of a large record is never relevant and never pays for validation.
    @lazy
    def _coded_conditions(self) -> list[tuple[dict[str, Any], list[tuple[str, str]]]]:
        """(resource, its codings) for every coded Condition, codings read once per request."""
        return [(c, cs) for c in self.record.resources("Condition") if (cs := codings(c.get("code")))]

    @lazy
    def _condition_codes(self) -> frozenset[tuple[str, str]]:
        """Every code of the record's Conditions: most value sets share none of them, and a set
        intersection says so without visiting a Condition."""
        return frozenset({code for _, cs in self._coded_conditions for code in cs})

    def _condition_fact(self, c: dict[str, Any]) -> ConditionFact | None:
        """The validated fact of a Condition (None if unreadable, refuted or entered in error)."""
        key = id(c)
        if key in self._condition_facts:
            return self._condition_facts[key]
        fact = None
        verification = first_code(c.get("verificationStatus"))
        if verification in NOT_RECORDED and self.record.readable(c, VERIFICATION):
            pass  # refuted or entered in error: no Condition, readable or not (nothing reported)
        elif not self.record.readable(c, CONDITION):
            self.malformed_conditions.append(c)
        elif verification not in NOT_RECORDED:
            clinical = first_code(c.get("clinicalStatus"))
            abatement = parse_date(c.get("abatementDateTime")) or parse_date(
                (c.get("abatementPeriod") or {}).get("end")
            )
            active = clinical in ACTIVE or (
                clinical is None and (abatement is None or abatement > self.today)
            )
            fact = ConditionFact(
                ref(c),
                c.get("code") or {},
                concept_text(c.get("code")),
                active,
                parse_date(c.get("onsetDateTime")) or parse_date((c.get("onsetPeriod") or {}).get("start")),
                abatement,
                parse_date(c.get("recordedDate")),
            )
        self._condition_facts[key] = fact
        return fact

    def conditions_in(self, valueset: str, *, active_only: bool = False) -> list[ConditionFact]:
        """Readable Conditions coded in the value set, in record order (memoised per request:
        many rules ask about the same few value sets; the caller must not change the list)."""
        key = (valueset, active_only)
        found = self._conditions_by_valueset.get(key)
        if found is None:
            if active_only:
                found = [f for f in self.conditions_in(valueset) if f.active]
            else:
                found = []
                members = self.t.valuesets[valueset].codes
                if not members.isdisjoint(self._condition_codes):
                    for c, cs in self._coded_conditions:
                        if not members.isdisjoint(cs) and (fact := self._condition_fact(c)) is not None:
                            found.append(fact)
            self._conditions_by_valueset[key] = found
        return found

    def unreadable_conditions_in(self, valueset: str, *, active_only: bool = False) -> list[str]:
        """References of unreadable Conditions whose code is in the value set (``active_only``:
        not those whose clinical status, read, says they are not current: a readable copy of
        them would not count either)."""
        if (valueset, False) not in self._conditions_by_valueset:
            self.conditions_in(valueset)  # reads (and so finds the unreadable ones of) the value set
        if not self.malformed_conditions:
            return []
        return [
            ref(c)
            for c in self.malformed_conditions
            if self.t.concept_in(c.get("code"), valueset) and not (active_only and self._not_current(c))
        ]

    def _not_current(self, c: dict[str, Any]) -> bool:
        """The Condition's clinical status was read and says it is not current (resolved, …)."""
        clinical = first_code(c.get("clinicalStatus"))
        return clinical is not None and clinical not in ACTIVE and self.record.readable(c, CLINICAL)


def first_code(concept: Any) -> str | None:
    """The first code of a concept's codings (None: none, or codings that are no list)."""
    for c in as_list(concept.get("coding")) if isinstance(concept, dict) else ():
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            return c["code"]
    return None
