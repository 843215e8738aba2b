"""Medication identity: which drug a medication record or order is about, however the EHR wrote it.

A record names its drug either inline (``medicationCodeableConcept``) or by ``medicationReference``
to a Medication resource, which can be

* contained in the record itself (``#med1``),
* in the request: prefetch bundles hold Medications that ``_include=…:medication`` added, or
* only on the FHIR server: :func:`fetch_missing` reads ``Medication?_id=…`` from ``fhirServer`` once
  per request for every reference nothing else resolved.

A Medication's drug is its ``code``; when the code names no known drug (a compounded or
multi-ingredient product, a local code), its ``ingredient[].item[x]`` are matched one by one. A
reference that cannot be resolved at all keeps its ``display`` (matched as free text) and is listed
in :attr:`MedicationResolver.unresolved` so a card can say the drug was not identified.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .elements import Reads
from .fhir_client import CallBudget, FetchPolicy, FhirClient, FhirFetchError
from .lazy import lazy
from .raw import as_dict, as_list
from .record import PatientRecord, Problem
from .terminology import DrugMatch, Terminology, concept_name, concept_names, concept_text, form_from_text

log = logging.getLogger(__name__)

# "Medication/abc", "https://ehr/fhir/Medication/abc", "Medication/abc/_history/2"
_MEDICATION_REF = re.compile(r"(?:^|/)Medication/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
FETCHED = "fhirServer:Medication"  # origin of Medications read by id after the prefetch
MAX_FETCH_IDS = 50  # distinct Medication ids read from the FHIR server per request
MEDICATION = Reads("Medication", "code", "form", "ingredient.item[x]")


def medication_id(reference: Any) -> str | None:
    """The Medication id of a literal (relative or absolute) reference, else None."""
    if not isinstance(reference, str):
        return None
    m = _MEDICATION_REF.search(reference)
    return m.group(1) if m else None


@dataclass
class Identified:
    """The drug of one record and how it was named."""

    drug: DrugMatch
    via: str  # "concept" | "contained" | "bundle" | "fetched" | "display" | "none"
    reference: str | None = None  # the medicationReference, when there was one


@dataclass
class MedicationResolver:
    """Resolves ``medicationReference`` against contained resources and the request's Medications."""

    record: PatientRecord
    terminology: Terminology
    unresolved: dict[str, str] = field(default_factory=dict)  # reference -> display ("" if none)

    @lazy
    def index(self) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in self.record.resources("Medication") if isinstance(r.get("id"), str)}

    def identify(self, res: dict[str, Any]) -> Identified:
        concept = res.get("medicationCodeableConcept")
        if isinstance(concept, dict):
            return Identified(self.terminology.match_drug(concept), "concept")
        ref = as_dict(res.get("medicationReference"))
        reference = ref.get("reference")
        display = ref.get("display") if isinstance(ref.get("display"), str) else ""
        med, via = self._find(res, reference)
        if med is not None and not self.record.readable(med, MEDICATION):
            med = None  # unreadable: reported by the record; identified by the display below, if any
        if med is not None:
            drug = self.of_medication(med, res)
            if not drug.ingredients and display:  # a Medication with only a local code: try the display
                by_name = self.terminology.match_drug({"text": display})
                drug = by_name if by_name.ingredients else drug
            return Identified(drug, via, reference if isinstance(reference, str) else None)
        if isinstance(reference, str) or display:
            key = reference if isinstance(reference, str) else f"(display only) {display}"
            self.unresolved.setdefault(key, display)
        if display:
            return Identified(self.terminology.match_drug({"text": display}), "display", reference)
        return Identified(DrugMatch(), "none", reference if isinstance(reference, str) else None)

    def name_of(self, res: dict[str, Any]) -> str:
        """What a record calls its drug, once (a concept's text, else its first display), by what
        :meth:`identify` identified it with: the inline concept; else the referenced Medication's
        code when it could be read and named the drug; else the reference's display, else that
        code's name. "" when nothing names it."""
        concept = res.get("medicationCodeableConcept")
        if isinstance(concept, dict):
            return concept_name(concept)
        ref = as_dict(res.get("medicationReference"))
        display = ref.get("display").strip() if isinstance(ref.get("display"), str) else ""
        med, _ = self._find(res, ref.get("reference"))
        if med is None or not self.record.readable(med, MEDICATION):
            return display
        name = concept_name(med.get("code"))
        if name and (not display or self.of_medication(med, res).ingredients):
            return name  # the Medication named the drug (its code, or its ingredients)
        return display or name  # identified by the display (a local code names nothing), if at all

    def names_of(self, res: dict[str, Any]) -> list[str]:
        """Every name a record gives its drug, once each (the inline concept's, else the readable
        referenced Medication code's, then the reference's display): what a card quotes when it
        says a name looks like a drug."""
        concept = res.get("medicationCodeableConcept")
        if isinstance(concept, dict):
            return concept_names(concept)
        ref = as_dict(res.get("medicationReference"))
        med, _ = self._find(res, ref.get("reference"))
        names = concept_names(med.get("code")) if med and self.record.readable(med, MEDICATION) else []
        if isinstance(ref.get("display"), str) and ref["display"].strip():
            names.append(ref["display"].strip())
        return list(dict.fromkeys(names))

    def _find(self, res: dict[str, Any], reference: Any) -> tuple[dict[str, Any] | None, str]:
        if not isinstance(reference, str):
            return None, "none"
        if reference.startswith("#"):
            for c in as_list(res.get("contained")):
                if as_dict(c).get("resourceType") == "Medication" and c.get("id") == reference[1:]:
                    return c, "contained"
            return None, "none"
        by_url = self.record.full_urls.get(reference)
        if by_url is not None and by_url.get("resourceType") == "Medication":
            return by_url, "bundle"  # a draftOrders entry referenced by its fullUrl (urn:uuid:…)
        mid = medication_id(reference)
        if mid is None:
            return None, "none"
        med = self.index.get(mid)
        if med is None:
            return None, "none"
        return med, "fetched" if self.record.origin_of(med) == FETCHED else "bundle"

    def of_medication(self, med: dict[str, Any], owner: dict[str, Any], depth: int = 0) -> DrugMatch:
        """The drug of a Medication: its code, else the union of its ingredients' items."""
        t = self.terminology
        code = med.get("code") if isinstance(med.get("code"), dict) else {}
        drug = t.match_drug(code)
        form_text = concept_text(med.get("form"))
        if drug.ingredients:
            return _with_form(drug, form_text)
        ingredients: set[str] = set()
        products: set[str] = set()
        matched_by = None
        for ing in as_list(med.get("ingredient")):
            ing = as_dict(ing)
            item = ing.get("itemCodeableConcept")
            part = DrugMatch()
            if isinstance(item, dict):
                part = t.match_drug(item)
            elif isinstance(as_dict(ing.get("itemReference")).get("reference"), str) and depth < 2:
                inner, _ = self._find(owner, ing["itemReference"]["reference"])
                if inner is None:
                    inner, _ = self._find(med, ing["itemReference"]["reference"])
                if inner is not None and inner.get("resourceType") == "Medication":
                    part = self.of_medication(inner, owner, depth + 1)
            ingredients |= part.ingredients
            products |= part.products
            if part.ingredients:
                matched_by = "code" if part.matched_by == "code" and matched_by in (None, "code") else "text"
        text = concept_text(code) or drug.text
        if ingredients:
            match = DrugMatch(frozenset(ingredients), frozenset(products), None, matched_by, text)
            return _with_form(match, form_text)
        return drug


def _with_form(drug: DrugMatch, form_text: str) -> DrugMatch:
    if drug.form or not form_text:
        return drug
    form = form_from_text(form_text)
    return DrugMatch(drug.ingredients, drug.products, form, drug.matched_by, drug.text) if form else drug


# -- fetching what nothing resolved -------------------------------------------------------------------
MED_TYPES = ("MedicationRequest", "MedicationStatement", "MedicationDispense", "MedicationAdministration")


def unresolved_ids(record: PatientRecord) -> list[str]:
    """Ids of ``Medication/{id}`` references neither contained nor in the request."""
    have = {r.get("id") for r in record.resources("Medication")}
    out: dict[str, None] = {}
    for res in [*(r for t in MED_TYPES for r in record.resources(t)), *record.draft_orders]:
        if isinstance(res.get("medicationCodeableConcept"), dict):
            continue
        mid = medication_id(as_dict(res.get("medicationReference")).get("reference"))
        if mid and mid not in have:
            out[mid] = None
    return list(out)[:MAX_FETCH_IDS]


def fetch_missing(
    record: PatientRecord,
    request: dict[str, Any],
    *,
    deadline_seconds: float,
    connect_timeout: float = 1.0,
    read_timeout: float | None = None,
    request_id: str | None = None,
    policy: FetchPolicy | None = None,
) -> set[str]:
    """Read the unresolved Medications from ``fhirServer`` (one search) into the record.

    ``policy`` is the call's fhirServer policy (SSRF; see ``fhir_client.FetchPolicy``).

    Returns the ids fetched. Failure is not fatal: the records keep their display text and the
    references stay unresolved (said in a card), and the reason is a record problem.
    """
    ids = unresolved_ids(record)
    server = request.get("fhirServer")
    if not ids or not isinstance(server, str) or deadline_seconds <= 0:
        return set()
    auth = as_dict(request.get("fhirAuthorization"))
    started = time.perf_counter()
    try:
        with FhirClient(
            server,
            budget=CallBudget(deadline_seconds, max_pages=3),
            policy=policy,
            access_token=auth.get("access_token") if isinstance(auth.get("access_token"), str) else None,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            request_id=request_id,
        ) as client:
            found = client.search("Medication?_id=" + ",".join(quote(i, safe="-.") for i in ids))
    except FhirFetchError as exc:
        log.warning("Medication fetch failed: %s (%s)", exc.kind, exc.detail)
        record.problems.append(Problem("Medication", f"{len(ids)} Medication reference(s)", exc.reason))
        return set()
    finally:
        log.debug("fetched Medication references", extra={"ms": (time.perf_counter() - started) * 1000})
    wanted = set(ids)
    got = set()
    for med in found:
        if (
            isinstance(med, dict)
            and med.get("resourceType") == "Medication"
            and isinstance(med.get("id"), str)  # an id that is no string names none asked for
            and med["id"] in wanted
        ):
            record.add(med, FETCHED)
            got.add(med["id"])
    return got
