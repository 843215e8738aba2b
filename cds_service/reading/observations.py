"""Observation facts: vital signs, scores and screens by kind, newest first, validated when read."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, NamedTuple

import orjson
from fhir.resources.R4B import get_fhir_model_class

from .dates import parse_datetime
from .element_checks import fields_of, leaf_for, modified, verdict
from .elements import Reads
from .lazy import lazy
from .raw import as_dict, as_float
from .record import PatientRecord, ref
from .terminology import answer_text, codings, concept_text, norm_code
from .units import quantity_in, unit_code

OBSERVATION = Reads(
    "Observation",
    "status",
    "code",
    "effective[x]",
    "issued",
    "value[x]",
    "component.code",
    "component.value[x]",
)
PRELIMINARY_OBS_STATUS = ("preliminary", "unknown")
_NOT_READINGS = ("entered-in-error", "cancelled", "registered")  # statuses that are no reading


class ObservationFact(NamedTuple):
    """One reading of a kind, validated. A named tuple, not a frozen dataclass: a frozen
    dataclass sets each of its ten fields through ``object.__setattr__`` (~15 k instructions per
    fact, ~10 facts per call); a tuple is made in one step, and stays as immutable."""

    ref: str
    kind: str
    when: datetime
    value: float | None = None
    unit: str | None = None
    code: tuple[str, str] | None = None  # coded answer (system, code)
    text: str = ""  # a coded answer's text and every display, joined: what it says is read from it
    preliminary: bool = False  # status preliminary/unknown: a signal, never a clearance
    from_text: bool = False  # read from a panel's value written out as text ("168/102 mmHg")
    unusable: str = ""  # why a kind with a unit has no value: "the latest has no unit" (no value, no id)
    name: str = ""  # the answer as a card quotes it (terminology.answer_text): its text, else displays


Candidate = tuple[datetime, dict[str, Any], dict[str, Any]]  # (time, resource, element read)
Entry = dict[str, Any] | tuple[dict[str, Any], dict[str, Any]]  # a resource, or (resource, element)


_TEXT = (str, type(None))
_UNREAD = object()
fromisoformat = datetime.fromisoformat
_FUTURE_SLACK = timedelta(hours=1)  # a reading up to an hour "ahead" is a clock skew, not the future


class ObservationKinds:
    """A rule set's observation kinds indexed once: codes, units, positive answers, and the kinds
    each ``coding`` list names (memoised by its codes or JSON: records repeat the same few codes)."""

    _built: dict[int, tuple[dict[str, dict[str, Any]], ObservationKinds]] = {}

    def __init__(self, observation_kinds: dict[str, dict[str, Any]]) -> None:
        self.codes: dict[tuple[str, str], str] = {}
        self.units = {k: spec["unit"] for k, spec in observation_kinds.items() if spec.get("unit")}
        self.positive_answers: dict[str, set[tuple[str, str]]] = {}
        self.positive_words: dict[str, tuple[frozenset[str], ...]] = {}
        self.unknown_answers: dict[str, set[tuple[str, str]]] = {}
        self.unknown_words: dict[str, tuple[frozenset[str], ...]] = {}
        # kinds answered in words or codes (pregnancy status): what a reading may say is known
        self.answers: dict[str, tuple[set[tuple[str, str]], tuple[frozenset[str], ...]]] = {}
        for kind, spec in observation_kinds.items():
            for c in spec.get("codes") or []:
                self.codes[norm_code(c["system"], str(c["code"]))] = kind
            self.positive_answers[kind] = {
                norm_code(c["system"], str(c["code"])) for c in spec.get("positive_answers") or []
            }
            # the words of each positive answer's display, for answers written out without its code
            self.positive_words[kind] = _display_words(spec.get("positive_answers"))
            unknown = spec.get("unknown_answers") or []
            if unknown:
                self.unknown_answers[kind] = {norm_code(c["system"], str(c["code"])) for c in unknown}
                self.unknown_words[kind] = _display_words(unknown)
            known = [*(spec.get("positive_answers") or []), *(spec.get("negative_answers") or [])]
            if known:
                self.answers[kind] = (
                    {norm_code(c["system"], str(c["code"])) for c in known},
                    _display_words(known),
                )
        # panels whose value may be written out as text ("168/102 mmHg"): (kind, which number)
        self.text_parts: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for kind, spec in observation_kinds.items():
            in_text = spec.get("in_text_of") or {}
            for c in in_text.get("codes") or []:
                self.text_parts.setdefault(norm_code(c["system"], str(c["code"])), []).append(
                    (kind, int(in_text["part"]))
                )
        self.code_keys = frozenset(code_key(code) for _, code in self.codes)
        # the kinds of each coding list, by its (system, code) pairs (or JSON): content that
        # different patients' records share (the same few codes), bounded, never patient data
        self._by_coding: dict[tuple[Any, ...] | bytes, list[str]] = {}
        # the first kind of one plain coding, by its code: (its system, kind or None); see first_kind
        self._by_code: dict[str, tuple[str, str | None]] = {}
        # kinds whose readings are answers that may say "unknown" (see says_unknown)
        self.answered = frozenset(self.answers) | frozenset(self.unknown_answers)

    def says_unknown(self, kind: str, element: dict[str, Any]) -> bool:
        """An answer that the value is not known (pregnancy status LA4489-6 "Unknown", or written
        out as "unknown"), or, for a kind with listed answers, an answer that is none of them and
        says neither positive nor negative ("Yes", "12 weeks", a number): not a reading of the
        kind, so it neither clears the request for one nor hides an earlier one."""
        if kind in self.answers and not _answers_one_of(element, *self.answers[kind], polar=True):
            return True
        codes = self.unknown_answers.get(kind)
        return bool(codes) and _answers_one_of(element, codes, self.unknown_words[kind])

    def read_from_text(self, o: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """(kind, element) for each kind a panel without components holds in its ``valueString``
        ("168/102 mmHg" → systolic 168 and diastolic 102 in the unit written): the element is
        made here, as a component would carry it. A text of another shape is not a reading; one
        without a unit is a reading whose value is unknown (a unit is never assumed)."""
        parts = [p for c in codings(o.get("code")) for p in self.text_parts.get(c, ())]
        text = o.get("valueString")
        found = _PAIR.fullmatch(text) if parts and isinstance(text, str) else None
        if found is None:
            return []
        unit = found.group(3)
        out = []
        for kind, part in parts:
            quantity: dict[str, Any] = {"value": float(found.group(part))}
            if unit:
                quantity["unit"] = unit
            out.append((kind, TextReading(valueQuantity=quantity)))
        return out

    @classmethod
    def of(cls, observation_kinds: dict[str, dict[str, Any]]) -> ObservationKinds:
        """The index of a rule set's kinds, built once per rule set (the mapping is kept with it,
        so its identity cannot be reused by another)."""
        hit = cls._built.get(id(observation_kinds))
        if hit is None or hit[0] is not observation_kinds:
            if len(cls._built) >= 64:
                cls._built.clear()
            hit = cls._built[id(observation_kinds)] = (observation_kinds, cls(observation_kinds))
        return hit[1]

    def first_kind(self, concept: Any) -> str | None:
        """The first observation kind a code concept names, or None.

        The usual shape, codings whose system and code are text, is one probe per coding by its
        code (hashing the code alone: the system is compared, not hashed); any other shape (not a
        dict, no ``coding``, a coding that is not an object, an unhashable code, a code seen
        with another system) raises or misses on the way and takes the careful path. Only text
        codes are stored, so a probe with another type (``True``, ``1``) never matches one."""
        try:
            kind = None
            for c in concept["coding"]:
                system, kind = self._by_code[c["code"]]
                if system != c["system"]:
                    raise KeyError(system)
                if kind is not None:
                    break
            return kind
        except (KeyError, TypeError):
            return self._first_kind(concept)

    def _first_kind(self, concept: Any) -> str | None:
        """The careful path of :meth:`first_kind`; it remembers the kind of each plain coding (a
        text system and code) by its code, for the first system seen with that code."""
        kinds = self._of_concept(concept)
        coding = concept.get("coding") if isinstance(concept, dict) else None
        if type(coding) is list:
            by_code = self._by_code
            for c in coding:
                if type(c) is dict:
                    system, code = c.get("system"), c.get("code")
                    if type(system) is str and type(code) is str and code not in by_code:
                        if len(by_code) >= 50_000:
                            by_code.clear()
                        by_code[code] = (system, self.codes.get(norm_code(system, code)))
        return kinds[0] if kinds else None

    def _of_concept(self, concept: Any) -> list[str]:
        coding = concept.get("coding") if isinstance(concept, dict) else None
        if not isinstance(coding, list):
            return []
        key: tuple[Any, ...] | bytes | None = None
        if all(type(c) is dict for c in coding):  # only each coding's system and code matter
            pairs = tuple((c.get("system"), c.get("code")) for c in coding)
            if all(type(system) in _TEXT and type(code) in _TEXT for system, code in pairs):
                key = pairs[0] if len(pairs) == 1 else pairs
        if key is None:
            try:
                key = orjson.dumps(coding)
            except (TypeError, ValueError, orjson.JSONEncodeError):
                key = None
        if key is not None:
            hit = self._by_coding.get(key)
            if hit is not None:
                return hit
        kinds = self._kinds_of(concept, coding)
        if key is not None:
            if len(self._by_coding) >= 50_000:
                self._by_coding.clear()
            self._by_coding[key] = kinds
        return kinds

    def _kinds_of(self, concept: dict[str, Any], coding: list[Any]) -> list[str]:
        """Most observations of a record are of no kind: a concept none of whose codes, however
        normalised (:func:`code_key`), is a kind's code is skipped before its (system, code) pairs
        are normalised."""
        keys = self.code_keys
        for c in coding:
            code = c.get("code") if isinstance(c, dict) else None
            if isinstance(code, str) and code.strip().replace(".", "").upper() in keys:
                return [self.codes[c] for c in codings(concept) if c in self.codes]
        return []


class ObservationFacts:
    """The Observation half of :class:`~.facts.Facts` (a mixin: it uses the record)."""

    record: PatientRecord
    now: datetime
    _kinds: ObservationKinds
    _obs_units: dict[str, str]  # kind -> the UCUM unit its values are compared in (rules' unit)
    # this request's memos (set in Facts.__init__): candidates by kind; when each panel read so far
    # was made (by identity: the record outlives it); the fact of each candidate already read (by
    # the candidate's identity); newest by (kind, window); series by kind
    _candidates_by_kind: dict[str, list[Candidate]]
    _observed: dict[int, datetime | None]
    _checked_facts: dict[int, ObservationFact | None]
    _newest: dict[tuple[str, float | None], tuple[list[ObservationFact], ObservationFact | None]]
    _series: dict[str, list[ObservationFact]]
    # per kind, the unreadable readings with no readable date: (reference, whether preliminary)
    _undated_unreadable: dict[str, list[tuple[str, bool]]]

    @lazy
    def _observations_by_kind(self) -> dict[str, list[Entry]]:
        """The readings of each kind, in record order: one code probe per Observation and nothing
        else, so an observation of a kind no rule asks for costs only that probe. A reading is the
        resource itself when its own code is of the kind (no pair is made per Observation); a
        panel's component, or its value written out as text, is a (resource, element) pair."""
        out: dict[str, list[Entry]] = {}
        first_kind = self._kinds.first_kind
        by_code = self._kinds._by_code  # first_kind's probe, inlined: this loop sees every reading
        for o in self.record.resources("Observation"):
            try:
                kind = None
                for c in o["code"]["coding"]:
                    system, kind = by_code[c["code"]]
                    if system != c["system"]:
                        raise KeyError(system)
                    if kind is not None:
                        break
            except (KeyError, TypeError):
                kind = first_kind(o.get("code"))
            if kind is not None:
                group = out.get(kind)
                if group is None:
                    out[kind] = [o]
                else:
                    group.append(o)
            if "component" in o or (kind is None and "valueString" in o):
                self._read_panel(o, kind is not None, out)  # in record order: readings may tie on time
        return out

    def _read_panel(self, o: dict[str, Any], coded: bool, out: dict[str, list[Entry]]) -> None:
        """A panel's components of a kind (BP), and, when neither it nor any component is of a
        kind, the kinds its value written out as text holds ("168/102 mmHg")."""
        listed = o.get("component")
        if type(listed) is list:
            first_kind = self._kinds.first_kind
            by_code = self._kinds._by_code
            for comp in listed:
                try:  # first_kind's probe, inlined (a panel's components: one coding each, most often)
                    ck = None
                    for c in comp["code"]["coding"]:
                        system, ck = by_code[c["code"]]
                        if system != c["system"]:
                            raise KeyError(system)
                        if ck is not None:
                            break
                except (KeyError, TypeError):
                    ck = first_kind(comp.get("code")) if type(comp) is dict else None
                if ck is not None:
                    group = out.get(ck)
                    if group is None:
                        out[ck] = [(o, comp)]
                    else:
                        group.append((o, comp))
                    coded = True
        if not coded and self._kinds.text_parts and "valueString" in o:
            for kind, element in self._kinds.read_from_text(o):
                out.setdefault(kind, []).append((o, element))

    def _candidates(self, kind: str) -> list[Candidate]:
        """(time, resource, element) of a kind, newest first, not yet validated: read when a rule
        first asks for the kind (memoised per request)."""
        hit = self._candidates_by_kind.get(kind)
        if hit is not None:
            return hit
        out: list[Candidate] = []
        answered = kind in self._kinds.answered
        whens = self._observed  # a BP panel's time is read once for both of its components
        for entry in self._observations_by_kind.get(kind, ()):
            if type(entry) is tuple:  # a panel's component: the panel's time is read once
                o, element = entry
                when = whens.get(id(o), _UNREAD)
            else:
                o = element = entry
                when = _UNREAD
            if o.get("status") in _NOT_READINGS:
                continue
            if when is _UNREAD:
                # parse_datetime inlined for the usual full effectiveDateTime (every reading of a
                # kind asked for passes here); any other value takes _observed_at
                when = None
                value = o.get("effectiveDateTime")
                if type(value) is str:
                    try:
                        when = fromisoformat(value)
                    except ValueError:
                        pass
                    else:
                        if when.tzinfo is None:
                            when = when.replace(tzinfo=UTC)
                if when is None:
                    when = _observed_at(o)
                if element is not o:
                    whens[id(o)] = when
            if when is None:  # relevant but undated: reported if unreadable, and then, if it is
                # a reading, it may be the latest (see unreadable_in)
                if not self.record.readable(o, OBSERVATION) and not (
                    ("dataAbsentReason" in element and _absent(element))
                    or (answered and self._no_reading(kind, o, element))
                ):
                    prelim = o.get("status") in PRELIMINARY_OBS_STATUS
                    self._undated_unreadable.setdefault(kind, []).append((ref(o), prelim))
                continue
            if "dataAbsentReason" in element and _absent(element):
                continue
            if answered and self._no_reading(kind, o, element):
                continue
            out.append((when, o, element))
        out.sort(key=itemgetter(0), reverse=True)
        self._candidates_by_kind[kind] = out
        return out

    def _no_reading(self, kind: str, o: dict[str, Any], element: dict[str, Any]) -> bool:
        """An answer that is no reading of the kind (:meth:`ObservationKinds.says_unknown`), said by
        a value that can be read: an invalid value says nothing, so it is a reading that could not
        be read (reported), never taken for "none of the answers" (then asked for as missing)."""
        if not self._kinds.says_unknown(kind, element):
            return False
        return self.record.readable(o, OBSERVATION) or not _value_invalid(element, element is o)

    def _checked(self, kind: str, item: Candidate) -> ObservationFact | None:
        memo = self._checked_facts
        key = id(item)  # the candidate lists live as long as the request: ids stay unique
        if key in memo:
            return memo[key]
        when, resource, element = item
        fact = None
        if self.record.readable(resource, OBSERVATION):  # unreadable: skipped and reported
            fact = _obs_fact(
                ref(resource),
                kind,
                when,
                element,
                self._obs_units.get(kind),
                resource.get("status") in PRELIMINARY_OBS_STATUS,
                type(element) is TextReading,
            )
        memo[key] = fact
        return fact

    def newest(
        self, kind: str, within_days: float | None = None
    ) -> tuple[list[ObservationFact], ObservationFact | None]:
        """(the preliminary readings newer than the latest final one, that final one) among the
        readable observations of a kind in the window (none future-dated), read once per request
        and window: newest first, so the walk stops at the first final one (memoised: the caller
        must not change the list)."""
        key = (kind, within_days)
        hit = self._newest.get(key)
        if hit is not None:
            return hit
        future = self.now + _FUTURE_SLACK
        oldest = self.now - timedelta(days=within_days) if within_days is not None else None
        prelims: list[ObservationFact] = []
        final = None
        for item in self._candidates(kind):
            when = item[0]
            if when > future:
                continue  # a future-dated reading is not a current one
            if oldest is not None and when < oldest:
                break
            f = self._checked(kind, item)
            if f is None:
                continue
            if not f.preliminary:
                final = f
                break
            prelims.append(f)
        hit = self._newest[key] = (prelims, final)
        return hit

    def unreadable_in(self, kind: str, within_days: float | None = None) -> bool:
        """Whether a reading of the kind in the window (none future-dated), or one whose date could
        not be read (it may be the latest), could not be read (reported in the record's problems):
        a gap then says so rather than "missing". For the gap path only: :meth:`newest` already
        read these."""
        candidates = self._candidates(kind)
        if kind in self._undated_unreadable:
            return True
        future = self.now + _FUTURE_SLACK
        oldest = self.now - timedelta(days=within_days) if within_days is not None else None
        for item in candidates:
            if item[0] > future:
                continue
            if oldest is not None and item[0] < oldest:
                break
            if self._checked(kind, item) is None:
                return True
        return False

    def unread_readings(self, kind: str) -> list[tuple[str, datetime | None]]:
        """(reference, time) of every final reading of a kind that could not be read, oldest first,
        then those whose time could not be read either (None): what a fact resting on the *absence*
        of readings in a stretch of time must weigh (TRD's separation of episodes). Preliminary ones
        are left out, as :meth:`series` leaves them out when read."""
        candidates = self._candidates(kind)  # fills the undated ones too
        out: list[tuple[str, datetime | None]] = [
            (ref(item[1]), item[0])
            for item in reversed(candidates)
            if item[1].get("status") not in PRELIMINARY_OBS_STATUS and self._checked(kind, item) is None
        ]
        out.extend((r, None) for r, prelim in self._undated_unreadable.get(kind, ()) if not prelim)
        return out

    def latest(self, kind: str, *, within_days: float | None = None) -> ObservationFact | None:
        """The newest readable *final* observation of a kind, optionally no older than ``within_days``
        (preliminary ones never clear a check: see :meth:`preliminary`)."""
        return self.newest(kind, within_days)[1]

    def preliminary(self, kind: str, *, within_days: float | None = None) -> list[ObservationFact]:
        """Preliminary readings newer than the latest final one in the window (safety signals)."""
        return list(self.newest(kind, within_days)[0])

    def series(self, kind: str) -> list[ObservationFact]:
        """Every readable final observation of a kind, oldest first (scores over time; memoised per
        request: the caller must not change the list)."""
        hit = self._series.get(kind)
        if hit is None:
            facts = [
                f for item in self._candidates(kind) if (f := self._checked(kind, item)) and not f.preliminary
            ]
            hit = self._series[kind] = facts[::-1]
        return hit


# words that make a written-out answer positive or negative (the rules' positive check reads the same)
_POLAR = re.compile(r"\b(positive|detected|reactive|not|non|negative|no|undetected)\b", re.I)


def _answers_one_of(
    element: dict[str, Any],
    codes: set[tuple[str, str]],
    words_of: tuple[frozenset[str], ...],
    *,
    polar: bool = False,
) -> bool:
    """The element's answer is one of these: by code, or written out in the words of one's display
    (``polar``: or in words that say positive or negative)."""
    concept = element.get("valueCodeableConcept")
    if isinstance(concept, dict):
        if any(c in codes for c in codings(concept)):
            return True
        text = concept_text(concept)
    else:
        text = element.get("valueString") if isinstance(element.get("valueString"), str) else ""
    if polar and _POLAR.search(text):  # "Positive", "Detected", "Not pregnant", "Negative"
        return True
    return says_only(text, words_of)


_WORD = re.compile(r"[a-z]+")

# "168/102 mmHg", "168 / 102", "25/14.4 kPa": two numbers and, optionally, a unit (no digits, no "/")
_PAIR = re.compile(r"\s*(\d{1,3}(?:\.\d+)?)\s*/\s*(\d{1,3}(?:\.\d+)?)\s*([^\d/\s][^\d/]*?)?\s*")


class TextReading(dict):  # type: ignore[type-arg]
    """An element made from a panel's text (:meth:`ObservationKinds.read_from_text`): a type of
    its own, so no element sent in a record can pass for one."""


def says_only(text: str, answers: tuple[frozenset[str], ...]) -> bool:
    """An answer written out ("Pregnant", valueString "pregnant", a local code displayed "PREGNANT")
    whose words are all words of one answer's display; "Not pregnant" is not "Pregnant"."""
    words = set(_WORD.findall(text.lower())) if text else set()
    return bool(words) and any(words <= answer for answer in answers)


def _display_words(answers: Any) -> tuple[frozenset[str], ...]:
    """The words of each answer's display, for answers written out without their code."""
    return tuple(
        frozenset(_WORD.findall(str(c["display"]).lower())) for c in answers or [] if c.get("display")
    )


def _observed_at(o: dict[str, Any]) -> datetime | None:
    """When an observation was made: ``effective[x]`` (the usual ``effectiveDateTime`` first),
    else when it was issued."""
    return parse_datetime(o.get("effectiveDateTime")) or _observed_otherwise(o)


def _observed_otherwise(o: dict[str, Any]) -> datetime | None:
    """The time of an observation without a readable ``effectiveDateTime``."""
    period = as_dict(o.get("effectivePeriod"))
    return (
        parse_datetime(o.get("effectiveInstant"))
        or parse_datetime(period.get("start"))
        or parse_datetime(period.get("end"))
        or parse_datetime(o.get("issued"))
    )


_VALUE_FIELDS: dict[bool, dict[str, Any]] = {}


def _value_invalid(element: dict[str, Any], whole: bool) -> bool:
    """Whether the value[x] of an observation (``whole``) or of a component is not valid R4B (its
    JSON type or its content: the walk's own verdict, asked again only on this rare path)."""
    fields = _VALUE_FIELDS.get(whole)
    if fields is None:
        model = get_fhir_model_class("Observation" if whole else "ObservationComponent")
        fields = _VALUE_FIELDS[whole] = {k: f for k, f in fields_of(model).items() if k.startswith("value")}
    for key, value in element.items():
        field = fields.get(key)
        if field is not None and value is not None:
            leaf = leaf_for(key, field)
            if verdict(leaf, value) is not None or (leaf.modifiable and modified(value)):
                return True
    return False


def _absent(element: dict[str, Any]) -> bool:
    """A reading recorded as not obtained (``dataAbsentReason``, no value): not a reading of its kind,
    so it never hides an earlier one (a diastolic "not obtained" at 08:35 leaves 104 at 08:30)."""
    return "dataAbsentReason" in element and not any(k.startswith("value") for k in element)


def code_key(code: str) -> str:
    """A code as both normalisations of terminology.norm_code would leave it comparable (stripped;
    ICD-10-CM also without dots and case), for a set lookup that can only miss when they would."""
    return code.strip().replace(".", "").upper()


def _unusable(q: dict[str, Any], unit: str) -> str:
    """Why a reading of a kind measured in ``unit`` has no value: by its unit, never its number."""
    if not q:  # a valueInteger: a number without a unit
        return "the latest has no unit"
    if as_float(q.get("value")) is None:
        return "the latest has no numeric value"
    if unit_code(q) is None:
        return "the latest has no unit"
    return f"the latest is in a unit not convertible to {unit}"


def _obs_fact(
    reference: str,
    kind: str,
    when: datetime,
    element: dict[str, Any],
    unit: str | None,
    preliminary: bool = False,
    from_text: bool = False,
) -> ObservationFact:
    """The value of an observation (or component). A kind with a unit (weight in kg, BP in mm[Hg])
    gets its value converted to that unit, or no value when the recorded unit is missing, unknown or
    measures something else: a number is never assumed to be in the expected unit."""
    q = as_dict(element.get("valueQuantity"))
    if unit is not None and (q or "valueInteger" in element):
        value = quantity_in(q, unit) if q else None
        if value is not None and unit_code(q) != unit:
            value = round(value, 1)  # converted: no more precision than the recording had
        return ObservationFact(
            reference,
            kind,
            when,
            value,
            unit if value is not None else None,
            preliminary=preliminary,
            from_text=from_text,
            unusable=_unusable(q, unit) if value is None else "",
        )
    for number in (
        as_float(q.get("value")),
        as_float(element.get("valueInteger")),
    ):
        if number is not None:
            return ObservationFact(
                reference, kind, when, number, q.get("code") or q.get("unit"), preliminary=preliminary
            )
    cc = element.get("valueCodeableConcept")
    if isinstance(cc, dict):
        cs = codings(cc)
        return ObservationFact(
            reference,
            kind,
            when,
            code=cs[0] if cs else None,
            text=concept_text(cc),
            preliminary=preliminary,
            name=answer_text(cc),
        )
    if isinstance(element.get("valueString"), str):
        return ObservationFact(reference, kind, when, text=element["valueString"], preliminary=preliminary)
    return ObservationFact(reference, kind, when, preliminary=preliminary)
