"""The patient record of one request: resources by type, checked before use.

Resources are grouped and de-duplicated without being parsed; a resource is validated against the
FHIR R4 model (``fhir.resources.R4B``) the first time a fact is derived from it. Most of a large
record is never relevant to ketamine and is never paid for; a malformed resource that does matter
is skipped and reported instead of failing the request.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ..services import PREFETCH_TYPES


@dataclass(frozen=True)
class Problem:
    """A resource the service could not use, and why (shown in cards and explanations)."""

    where: str  # prefetch key or "context.draftOrders"
    resource: str  # "Observation/abc" or "(no id)"
    message: str


@dataclass
class PatientRecord:
    patient: dict[str, Any] | None = None
    by_type: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    draft_orders: list[dict[str, Any]] = field(default_factory=list)
    selections: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    _checked: dict[int, bool] = field(default_factory=dict, repr=False)
    _origin: dict[int, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_prefetch(
        cls, resources: dict[str, list[dict[str, Any]]], context: dict[str, Any]
    ) -> PatientRecord:
        record = cls()
        seen: set[tuple[str, str]] = set()
        patient_id = context.get("patientId")
        for key, items in resources.items():
            expected = PREFETCH_TYPES.get(key)
            for res in items:
                rtype = res.get("resourceType") if isinstance(res, dict) else None
                # Medications come along with any key (``_include=…:medication``) for the records
                # that reference them.
                if expected and rtype != expected and rtype != "Medication":
                    if rtype != "OperationOutcome":
                        record.problems.append(
                            Problem(key, _ref(res), f"expected {expected}, got {rtype or 'no resourceType'}")
                        )
                    continue
                rid = res.get("id")
                if isinstance(rid, str):
                    if (rtype, rid) in seen:
                        continue
                    seen.add((rtype, rid))
                if rtype == "Patient":
                    if record.patient is None and (not patient_id or rid in (None, patient_id)):
                        record.patient = res
                        record._origin[id(res)] = key
                    continue
                record.by_type.setdefault(rtype, []).append(res)
                record._origin[id(res)] = key
        bundle = context.get("draftOrders") or {}
        for entry in bundle.get("entry") or []:
            res = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(res, dict):
                record.draft_orders.append(res)
                record._origin[id(res)] = "context.draftOrders"
        record.selections = [s for s in context.get("selections") or [] if isinstance(s, str)]
        return record

    def add(self, resource: dict[str, Any], where: str) -> None:
        """Add a resource read after the prefetch (e.g. a referenced Medication fetched by id)."""
        self.by_type.setdefault(str(resource.get("resourceType")), []).append(resource)
        self._origin[id(resource)] = where

    def origin_of(self, resource: dict[str, Any]) -> str | None:
        """The prefetch key (or other source) a resource came from."""
        return self._origin.get(id(resource))

    def usable(self, resource: dict[str, Any]) -> bool:
        """Validate a resource against its R4 model once; report and skip it if malformed."""
        key = id(resource)
        if key not in self._checked:
            self._checked[key] = self._validate(resource)
        return self._checked[key]

    def _validate(self, resource: dict[str, Any]) -> bool:
        where = self._origin.get(id(resource), "?")
        try:
            digest = hashlib.blake2b(orjson.dumps(resource), digest_size=16).digest()
        except (TypeError, ValueError, RecursionError, orjson.JSONEncodeError):
            digest = None
        error: str | None = None
        cached = False
        if digest is not None:
            with _VERDICT_LOCK:  # gunicorn threads share the cache
                if digest in _VERDICTS:
                    error, cached = _VERDICTS[digest], True
                    _VERDICTS.move_to_end(digest)
        if not cached:
            error = _model_error(resource)
            if digest is not None:
                with _VERDICT_LOCK:
                    _VERDICTS[digest] = error
                    if len(_VERDICTS) > _VERDICT_LIMIT:
                        _VERDICTS.popitem(last=False)  # least recently used
        if error is not None:
            self.problems.append(Problem(where, _ref(resource), error))
            return False
        return True

    def resources(self, rtype: str) -> list[dict[str, Any]]:
        """Every resource of a type, unvalidated (callers filter, then call :meth:`usable`)."""
        return self.by_type.get(rtype, [])

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.by_type.values()) + (1 if self.patient else 0)


# Validation verdicts by content digest. EHRs send the same resources with every hook call of a
# session (patient-view, then order-select on each change, then order-sign), and validating a
# MedicationRequest against the R4 model costs about a millisecond; identical content always gets
# the same verdict, so it is computed once per process.
# Bounded (least recently used out) at about 170 bytes an entry: ~4 MB per worker.
_VERDICTS: OrderedDict[bytes, str | None] = OrderedDict()
_VERDICT_LIMIT = 25_000
_VERDICT_LOCK = threading.Lock()


def _model_error(resource: dict[str, Any]) -> str | None:
    """Why a resource fails its FHIR R4 model, or None when it is valid."""
    rtype = resource.get("resourceType")
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError, TypeError, AttributeError):
        return f"unknown resourceType {rtype!r}"
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return f"{loc}: {first.get('msg', 'invalid')}"[:200]
    except (ValueError, TypeError, RecursionError) as exc:
        return f"invalid: {exc}"[:200]
    return None


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
