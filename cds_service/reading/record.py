"""The patient record of one request: resources by type, read element by element.

Resources are grouped and de-duplicated without being parsed. Nothing validates a resource as a
whole: a fact asks :meth:`PatientRecord.readable` whether the elements it reads (a
:class:`~.elements.Reads`) are valid FHIR R4B. A resource whose *read* element is invalid is
reported as a :class:`Problem` and that fact is unknown; a resource whose other elements are
invalid is kept, and those elements are counted in :meth:`PatientRecord.ignored_report` (type,
element path, count: no values, no ids). Most of a large record is never relevant to ketamine
and is never paid for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from ..services import PREFETCH_TYPES
from .elements import Reads, error_for, walk
from .fhir_client import is_error_outcome

IGNORED_LIMIT = 50  # distinct ignored element paths reported per request (hostile input stays small)
_KIND = itemgetter("resourceType")
_ID = itemgetter("id")
#: the reason reported for a Patient whose ``id`` is not a string (it was read as one without an id)
NOT_AN_ID = "not a FHIR id: read as the patient without an id"
#: a prefetched Patient whose id is not ``context.patientId``: named without that id
OTHER_PATIENT_ENTRY = "Patient (another patient's)"
OTHER_PATIENT = "another patient's record: its id is not the context's patientId"


@dataclass(frozen=True)
class Problem:
    """A resource the service could not use, and why (shown in cards and explanations)."""

    where: str  # prefetch key or "context.draftOrders"
    resource: str  # "Observation/abc" or "(no id)"
    message: str
    #: True: the resource was kept and only the element the message names was not read (element-level
    #: reading); False: the entry was not read at all (another type, an error outcome, not fetched)
    partial: bool = False
    #: which entry (``id()`` of the resource; 0 if none): the card counts entries, not messages
    entry: int = 0


@dataclass
class PatientRecord:
    patient: dict[str, Any] | None = None
    by_type: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    draft_orders: list[dict[str, Any]] = field(default_factory=list)
    selections: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ignored: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    full_urls: dict[str, dict[str, Any]] = field(default_factory=dict)  # draftOrders entries by fullUrl
    #: prefetch keys that could not be read (fetch mode), and why: the facts resting on them are
    #: unknown, never "absent" (engine/unread.py)
    unread: dict[str, str] = field(default_factory=dict)
    _failing: dict[int, frozenset[int]] = field(default_factory=dict, repr=False)  # walk() by id
    _unreadable: dict[tuple[int, int], str] = field(default_factory=dict, repr=False)
    _origin: dict[int, str] = field(default_factory=dict, repr=False)
    #: the prefetch's resources by key (each parsed object is its own), until :meth:`origin_of`
    #: first indexes them: most requests never ask
    _segments: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list, repr=False)
    #: what the walk found in content this record repeats (a monthly refill's drug and sig), by
    #: that content: per request, so it may hold the record's words (elements.walk)
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_prefetch(
        cls, resources: dict[str, list[dict[str, Any]]], context: dict[str, Any]
    ) -> PatientRecord:
        record = cls()
        seen: dict[str, set[str]] = {}  # ids by resource type: a resource sent twice is read once
        patient_id = context.get("patientId")
        by_type, segments = record.by_type, record._segments  # once per resource: locals
        for key, items in resources.items():
            expected = PREFETCH_TYPES.get(key)
            segments.append((key, items))
            if expected and record._take_whole(expected, items, seen):
                continue
            group = by_type.get(expected) if expected else None
            ids = seen.get(expected) if expected else None
            for res in items:
                rtype = res.get("resourceType") if isinstance(res, dict) else None
                if rtype != expected or group is None or ids is None:  # the general case
                    if not record._place(key, expected, res, rtype, seen, patient_id):
                        continue
                    group = by_type.get(expected) if expected else None
                    ids = seen.get(expected) if expected else None
                    continue
                rid = res.get("id")
                if isinstance(rid, str):
                    if rid in ids:
                        continue
                    ids.add(rid)
                group.append(res)
        bundle = context.get("draftOrders") or {}
        for entry in bundle.get("entry") or []:
            res = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(res, dict):
                full_url = entry.get("fullUrl")
                if isinstance(full_url, str):  # Bundle-internal references (``urn:uuid:…``)
                    record.full_urls[full_url] = res
                if res.get("resourceType") == "Medication":  # what an order references, not an order
                    record.by_type.setdefault("Medication", []).append(res)
                else:
                    record.draft_orders.append(res)
                record._origin[id(res)] = "context.draftOrders"
        record.selections = [s for s in context.get("selections") or [] if isinstance(s, str)]
        return record

    def _take_whole(self, expected: str, items: list[Any], seen: dict[str, set[str]]) -> bool:
        """A prefetch key's resources taken at once, in C, when each is an object of the key's own
        type (not the Patient) with a string id seen neither before nor twice in the key: the usual
        key, for which the loop of :meth:`from_prefetch` would keep every one, in order. Whether they
        were taken (if not, nothing was done: the loop decides)."""
        if expected == "Patient" or not items:
            return False
        try:
            kinds = list(map(_KIND, items))  # KeyError, TypeError: no resourceType, not an object
            ids = list(map(_ID, items))  # KeyError: no id
            "".join(ids)  # TypeError: an id that is not a string
        except (KeyError, TypeError):
            return False
        if kinds.count(expected) != len(kinds):
            return False
        known = seen.get(expected)
        fresh = set(ids)
        if len(fresh) != len(ids) or (known is not None and not known.isdisjoint(fresh)):
            return False
        if known is None:
            seen[expected] = fresh
        else:
            known |= fresh
        self.by_type.setdefault(expected, []).extend(items)
        return True

    def _place(
        self,
        key: str,
        expected: str | None,
        res: Any,
        rtype: Any,
        seen: dict[str, set[str]],
        patient_id: Any,
    ) -> bool:
        """One resource of a prefetch key the fast loop of :meth:`from_prefetch` did not take (the
        key's first of its type, the Patient, another type, a Medication): whether it was kept."""
        # Medications come along with any key (``_include=…:medication``) for the records that
        # reference them.
        if expected and rtype != expected and rtype != "Medication":
            self._unexpected(key, expected, res, rtype)
            return False
        rid = res.get("id")
        if isinstance(rid, str):
            ids = seen.get(rtype)
            if ids is None:
                seen[rtype] = {rid}
            elif rid in ids:
                return False
            else:
                ids.add(rid)
        if rtype == "Patient":
            if rid is not None and (not isinstance(rid, str) or not rid):
                # An id that is no FHIR id names no one, so no one else either: read as a Patient
                # sent without an id (as the prefetch key asked for this patient), and said.
                self.ignored[("Patient", "id", NOT_AN_ID)] += 1
                rid = None
            if patient_id and rid is not None and rid != patient_id:
                # Not this patient's record (an EHR's mix-up): left out and said, never its id.
                self.problems.append(Problem(key, OTHER_PATIENT_ENTRY, OTHER_PATIENT, entry=id(res)))
                return False
            if self.patient is None:
                self.patient = res
                return True
            return False
        self.by_type.setdefault(rtype, []).append(res)
        if expected and rtype == expected:
            seen.setdefault(rtype, set())  # the fast loop's set for this type from now on
        return True

    def _unexpected(self, key: str, expected: str, res: Any, rtype: Any) -> None:
        """A resource of another type under a prefetch key: said, and an error outcome makes what
        rests on the key unknown (the search may have left records out)."""
        if rtype == "OperationOutcome":
            if is_error_outcome(res):
                self.problems.append(Problem(key, "OperationOutcome", INCOMPLETE))
                self.unread[key] = "outcome-error"
        else:
            got = rtype or "no resourceType"
            self.problems.append(Problem(key, _ref(res), f"expected {expected}, got {got}", entry=id(res)))

    def add(self, resource: dict[str, Any], where: str) -> None:
        """Add a resource read after the prefetch (e.g. a referenced Medication fetched by id)."""
        self.by_type.setdefault(str(resource.get("resourceType")), []).append(resource)
        self._origin[id(resource)] = where

    def origin_of(self, resource: dict[str, Any]) -> str | None:
        """The prefetch key (or other source) a resource came from."""
        if self._segments:  # the prefetch's, indexed on the first question (rarely asked)
            for key, items in self._segments:
                for res in items:
                    self._origin.setdefault(id(res), key)
            self._segments.clear()
        return self._origin.get(id(resource))

    def readable(self, resource: dict[str, Any], reads: Reads) -> bool:
        """Whether every element ``reads`` names is valid R4B in this resource (absent counts as
        valid: the fact has no value for it). If not, the resource is reported once per element
        set and the caller must treat its fact as unknown.

        Each resource is walked once (:func:`~.elements.walk`), for every element any fact reads
        in its type, and what it ignored is counted then; later reads of it, by this or another
        fact, only compare node numbers."""
        failing = self._failing.get(id(resource))
        if failing is None:
            failing, ignored = walk(resource, reads.rtype, self._memo)
            self._failing[id(resource)] = failing
            for path, reason in ignored:
                self.ignored[(reads.rtype, path, reason)] += 1
        if (
            (not failing or failing.isdisjoint(reads.nodes))
            and (reads.modifiers_ok or "modifierExtension" not in resource)
            and resource.get("resourceType") == reads.rtype
        ):
            return True
        return self._report(resource, reads, failing)

    def _report(self, resource: dict[str, Any], reads: Reads, failing: frozenset[int]) -> bool:
        """The slow path of :meth:`readable`: the message, and the problem said once."""
        key = (id(resource), id(reads))
        if key in self._unreadable:
            return False
        partial = resource.get("resourceType") == reads.rtype
        if not partial:
            error: str | None = f"expected {reads.rtype}, got {resource.get('resourceType')!r}"
        else:
            error = error_for(resource, reads, failing)
        if error is None:  # cannot happen (the nodes said it fails); never claim what was not checked
            error = f"{reads.paths[0] if reads.paths else reads.rtype}: invalid"
        self._unreadable[key] = error
        problem = Problem(self.origin_of(resource) or "?", _ref(resource), error, partial, id(resource))
        if problem not in self.problems:  # one resource, one reason: said once (a modifierExtension)
            self.problems.append(problem)
        return False

    def unreadable_because(self, resource: dict[str, Any], reads: Reads) -> str | None:
        """Why :meth:`readable` said no for these elements ("birthDate: …"; element names, never
        values); None when it said yes or was not asked."""
        return self._unreadable.get((id(resource), id(reads)))

    def ignored_counts(self) -> dict[str, int]:
        """``{"MedicationRequest.category": 1}``: the ignored elements by path, for the call log
        (at most :data:`IGNORED_LIMIT` paths; the rest are counted under ``"(more)"``)."""
        out: Counter[str] = Counter()
        for (rtype, path, _reason), n in self.ignored.items():
            out[f"{rtype}.{path}"] += n
        items = sorted(out.items())
        shown = dict(items[:IGNORED_LIMIT])
        if len(items) > IGNORED_LIMIT:
            shown["(more)"] = sum(n for _, n in items[IGNORED_LIMIT:])
        return shown

    def ignored_report(self) -> list[dict[str, Any]]:
        """Invalid elements of resources that were read, which no fact reads and which were
        therefore ignored: ``[{"resourceType", "element", "reason", "count"}]`` (no values, no ids;
        at most :data:`IGNORED_LIMIT` entries, then one ``"element": "(more)"`` entry counting the rest)."""
        items = sorted(self.ignored.items())
        out = [
            {"resourceType": rtype, "element": path, "reason": reason, "count": n}
            for (rtype, path, reason), n in items[:IGNORED_LIMIT]
        ]
        if len(items) > IGNORED_LIMIT:
            rest = sum(n for _, n in items[IGNORED_LIMIT:])
            out.append({"resourceType": "(any)", "element": "(more)", "reason": "not listed", "count": rest})
        return out

    def resources(self, rtype: str) -> list[dict[str, Any]]:
        """Every resource of a type, unvalidated (callers filter, then call :meth:`readable`)."""
        return self.by_type.get(rtype, [])

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.by_type.values()) + (1 if self.patient else 0)


INCOMPLETE = "the FHIR server reported an error with this search: its results may be incomplete"


def _ref(resource: Any) -> str:
    if not isinstance(resource, dict):
        return "(not an object)"
    rid = resource.get("id")
    return (
        f"{resource.get('resourceType', '?')}/{rid}"
        if isinstance(rid, str)
        else f"{resource.get('resourceType', '?')} (no id)"
    )


def ref(resource: dict[str, Any]) -> str:
    return _ref(resource)
