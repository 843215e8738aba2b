"""Value sets and the RxNorm product → ingredient map, loaded from ``rules/``.

Everything is compiled into frozensets and dicts once at load, so a lookup during a request is a
hash probe. Medication matching goes code first (product or ingredient, RxNorm or ATC) and falls
back to the medication's text (generic and brand names); a text match is flagged so cards can say so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class

from . import datatypes
from .raw import as_list, without_words

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
NDC = "http://hl7.org/fhir/sid/ndc"

SYSTEM_ALIASES = {
    "rxnorm": RXNORM,
    "atc": ATC,
    "icd": ICD10CM,
    "icd-10-cm": ICD10CM,
    "sct": "http://snomed.info/sct",
    "snomed": "http://snomed.info/sct",
    "loinc": "http://loinc.org",
    "cpt": "http://www.ama-assn.org/go/cpt",
    "ndc": NDC,
    # The OID forms some EHRs and converters still send (hl7.org/fhir/r4/namingsystem-terminologies.html)
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "urn:oid:2.16.840.1.113883.6.1": "http://loinc.org",
    "urn:oid:2.16.840.1.113883.6.96": "http://snomed.info/sct",
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.69": NDC,
    "urn:oid:2.16.840.1.113883.6.73": ATC,
    "urn:oid:2.16.840.1.113883.6.12": "http://www.ama-assn.org/go/cpt",
}


def ndc_products(code: str) -> list[tuple[str, str]]:
    """The (labeler, product) pairs, normalised to 5 + 4 digits, an NDC can stand for.

    ``42023-113-10`` and ``42023-0113-10`` (hyphenated, any segment lengths) give one pair; an
    11-digit code is 5-4-2; an unhyphenated 10-digit code is ambiguous (4-4-2, 5-3-2 or 5-4-1) and
    gives each reading.
    """
    code = code.strip()
    if "-" in code:
        parts = code.split("-")
        if (
            len(parts) in (2, 3)
            and all(p.isdigit() for p in parts[:2])
            and len(parts[0]) <= 5
            and len(parts[1]) <= 4
        ):
            return [(parts[0].zfill(5), parts[1].zfill(4))]
        return []
    if not code.isdigit():
        return []
    if len(code) == 11:
        return [(code[:5], code[5:9])]
    if len(code) == 10:
        return [(code[:4].zfill(5), code[4:8]), (code[:5], code[5:8].zfill(4)), (code[:5], code[5:9])]
    return []


def norm_code(system: str, code: str) -> tuple[str, str]:
    """ICD-10-CM codes compare without dots and case; other systems compare exactly."""
    system = SYSTEM_ALIASES.get(system, system)
    if system == ICD10CM:
        return system, code.replace(".", "").upper().strip()
    return system, code.strip()


def codings(concept: Any) -> list[tuple[str, str]]:
    """(system, code) pairs of a CodeableConcept dict, normalised."""
    if not isinstance(concept, dict):
        return []
    out = []
    for c in as_list(concept.get("coding")):
        if isinstance(c, dict):
            system, code = c.get("system"), c.get("code")
            if isinstance(code, str) and isinstance(system, str):
                out.append(norm_code(system, code))
    return out


#: Certainly a valid CodeableConcept (R4B's keys and value types, :mod:`.datatypes`): only such a
#: concept's JSON keys a kept match. An element R4B does not define (an EHR's own "remark") may
#: hold anything about the patient, and :func:`~.raw.without_words` replaces only the written ones.
_PLAIN_CONCEPT = datatypes.compiled(
    get_fhir_model_class("MedicationRequest").model_fields["medicationCodeableConcept"].annotation
)


def concept_names(concept: Any) -> list[str]:
    """Every name a CodeableConcept gives, once each: its text, then each display."""
    if not isinstance(concept, dict):
        return []
    names = [concept.get("text")] + [
        c.get("display") for c in as_list(concept.get("coding")) if isinstance(c, dict)
    ]
    return list(dict.fromkeys(n.strip() for n in names if isinstance(n, str) and n.strip()))


def concept_name(concept: Any, fallback: str = "") -> str:
    """A CodeableConcept's name, once: its text, else its first display (never both joined, as
    :func:`concept_text` joins them for matching)."""
    names = concept_names(concept)
    return names[0] if names else fallback


def answer_text(concept: Any) -> str:
    """A coded answer as quoted in a card: its text, else each distinct display once, joined by
    " / " (what an answer says may be in any of its displays: the first alone could hide it)."""
    if isinstance(concept, dict) and isinstance(concept.get("text"), str) and concept["text"].strip():
        return concept["text"].strip()
    return " / ".join(concept_names(concept))


def concept_text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    parts = [concept.get("text") or ""]
    parts += [c.get("display") or "" for c in as_list(concept.get("coding")) if isinstance(c, dict)]
    return " ".join(p for p in parts if isinstance(p, str)).strip()


@dataclass(frozen=True)
class Ingredient:
    id: str
    display: str
    classes: tuple[str, ...]
    names: tuple[str, ...]


@dataclass(frozen=True)
class Product:
    code: str
    display: str
    ingredients: frozenset[str]
    form: str | None


@dataclass(frozen=True)
class DrugMatch:
    """What a medication concept was recognised as."""

    ingredients: frozenset[str] = frozenset()
    products: frozenset[str] = frozenset()
    form: str | None = None
    matched_by: str | None = None  # "code" | "text" | None
    text: str = ""


@dataclass
class ValueSet:
    id: str
    title: str
    kind: str
    source: str
    ingredients: frozenset[str] = frozenset()
    products: frozenset[str] = frozenset()
    codes: frozenset[tuple[str, str]] = frozenset()
    description: str = ""
    size: int = 0


@dataclass
class Terminology:
    ingredients: dict[str, Ingredient] = field(default_factory=dict)
    products: dict[str, Product] = field(default_factory=dict)
    valuesets: dict[str, ValueSet] = field(default_factory=dict)
    # (labeler, product) of an NDC product (5 + 4 digits) -> the product it is
    ndc: dict[tuple[str, str], Product] = field(default_factory=dict)
    # (system, code) of an ingredient code (RxNorm IN or ATC) -> ingredient id
    ingredient_codes: dict[tuple[str, str], str] = field(default_factory=dict)
    # (system, code) of a Timing.code -> the (frequency, period, periodUnit) it abbreviates
    # (rules/terminology/timing.yaml; see dosage.timing_codes)
    timing: dict[tuple[str, str], tuple[float, float, str]] = field(default_factory=dict)
    _name_pattern: re.Pattern[str] | None = None
    _name_to_ingredient: dict[str, str] = field(default_factory=dict)
    _match_cache: dict[Any, DrugMatch] = field(default_factory=dict)
    _drug_in_cache: dict[tuple[frozenset[str], frozenset[str], str], frozenset[str]] = field(
        default_factory=dict
    )
    _valuesets_of: dict[tuple[frozenset[str], frozenset[str]], tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, medications: dict[str, Any], valuesets: Iterable[dict[str, Any]]) -> Terminology:
        t = cls()
        systems = medications.get("systems") or {}
        rx_system = systems.get("rxnorm", RXNORM)
        atc_system = systems.get("atc", ATC)
        for ing_id, spec in (medications.get("ingredients") or {}).items():
            names = tuple(sorted({n.lower() for n in spec.get("names") or []} | {ing_id.lower()}))
            t.ingredients[ing_id] = Ingredient(
                ing_id, spec.get("display", ing_id), tuple(spec.get("classes") or ()), names
            )
            for code in spec.get("rxnorm") or []:
                t.ingredient_codes[norm_code(rx_system, str(code))] = ing_id
            for code in spec.get("atc") or []:
                t.ingredient_codes[norm_code(atc_system, str(code))] = ing_id
            for name in names:
                t._name_to_ingredient[name] = ing_id
        for code, spec in (medications.get("products") or {}).items():
            t.products[str(code)] = Product(
                str(code),
                spec.get("display", ""),
                frozenset(spec.get("ingredients") or ()),
                spec.get("form"),
            )
        for code, spec in (medications.get("ndc") or {}).items():
            for key in ndc_products(str(code)):
                t.ndc[key] = Product(
                    str(code),
                    spec.get("display", ""),
                    frozenset(spec.get("ingredients") or ()),
                    spec.get("form"),
                )
        if t._name_to_ingredient:
            alternatives = sorted(t._name_to_ingredient, key=len, reverse=True)
            t._name_pattern = re.compile(
                r"(?<![a-z])(" + "|".join(re.escape(n) for n in alternatives) + r")(?![a-z])"
            )
        for spec in valuesets:
            vs = ValueSet(
                id=spec["id"],
                title=spec.get("title", spec["id"]),
                kind=spec.get("kind", "condition"),
                source=spec.get("source", ""),
                description=spec.get("description", ""),
                ingredients=frozenset(spec.get("ingredients") or ()),
                products=frozenset(str(p) for p in spec.get("products") or ()),
                codes=frozenset(norm_code(c["system"], str(c["code"])) for c in spec.get("codes") or ()),
            )
            vs.size = len(vs.ingredients) + len(vs.products) + len(vs.codes)
            t.valuesets[vs.id] = vs
        return t

    # -- medications ---------------------------------------------------------------------------
    def match_drug(self, concept: Any) -> DrugMatch:
        """Ingredients of a medication CodeableConcept: by code, else by text. Codes are looked up
        at once (a few hash probes, no words read but the concept's own text given back); a match
        by the text is memoised, and what is kept holds none of the patient's words: a concept
        with its own text is not kept when the words decided (its codes named no known drug)."""
        coded = self._coded(concept)
        if coded is not None:
            return DrugMatch(coded[0], coded[1], coded[2], "code", concept_text(concept))
        try:  # the concept's JSON is the key: one C call instead of normalising its codings
            content = orjson.dumps(concept)
        except (TypeError, ValueError, orjson.JSONEncodeError):
            return self._match_drug(concept)
        key = without_words(content)
        if key is None:
            return self._match_drug(concept)
        written = key is not content  # without_words gives the same object back when none
        hit = self._match_cache.get(key)
        if hit is not None:
            if written:  # the concept's own words, never kept
                text = concept_text(concept)
                return DrugMatch(hit.ingredients, hit.products, hit.form, hit.matched_by, text)
            return hit
        hit = self._match_drug(concept)
        if written and hit.matched_by != "code":
            return hit
        if not _PLAIN_CONCEPT(concept):  # a key R4B does not define may say anything: not a key
            return hit
        if len(self._match_cache) > 50_000:
            self._match_cache.clear()
        self._match_cache[key] = replace(hit, text="") if written else hit
        return hit

    def _coded(self, concept: Any) -> tuple[frozenset[str], frozenset[str], str | None] | None:
        """(ingredients, products, form) the concept's codes name; None when they name no known drug."""
        coding = concept.get("coding") if isinstance(concept, dict) else None
        if not isinstance(coding, list):
            return None
        ingredients: set[str] = set()
        products: set[str] = set()
        form = None
        for c in coding:
            if not isinstance(c, dict):
                continue
            system, code = c.get("system"), c.get("code")
            if not isinstance(code, str) or not isinstance(system, str):
                continue
            system, code = norm_code(system, code)
            if system == RXNORM and code in self.products:
                p = self.products[code]
                products.add(code)
                ingredients |= p.ingredients
                form = form or p.form
            elif (system, code) in self.ingredient_codes:
                ingredients.add(self.ingredient_codes[(system, code)])
            elif system == NDC and self.ndc:
                for key in ndc_products(code):
                    if key in self.ndc:
                        ingredients |= self.ndc[key].ingredients
                        form = form or self.ndc[key].form
                        break
        if not ingredients:
            return None
        return frozenset(ingredients), frozenset(products), form

    def _match_drug(self, concept: Any) -> DrugMatch:
        text = concept_text(concept)
        coded = self._coded(concept)
        if coded is not None:
            return DrugMatch(coded[0], coded[1], coded[2], "code", text)
        by_text = self.ingredients_in_text(text)
        if by_text:
            return DrugMatch(by_text, frozenset(), form_from_text(text), "text", text)
        return DrugMatch(text=text)

    def ingredients_in_text(self, text: str) -> frozenset[str]:
        if not text or self._name_pattern is None:
            return frozenset()
        found = {self._name_to_ingredient[m] for m in self._name_pattern.findall(text.lower())}
        # "esketamine" also contains "ketamine" only as a substring, which the word boundary rules out.
        return frozenset(found)

    def suggested_by_text(self, text: str, valueset_id: str) -> frozenset[str]:
        """Ingredients of a medication value set whose name *loosely* appears in a text: inside a
        word and without a final "e" ("Ketamin", "S-Ketamin", "esketaminum"). Only for saying that an
        unidentified order may be one of them, never for identifying it."""
        low = text.lower() if isinstance(text, str) else ""
        if not low:
            return frozenset()
        vs = self.valuesets[valueset_id]
        ids = set(vs.ingredients)
        for code in vs.products:
            ids |= self.products[code].ingredients
        found = set()
        for ing_id in ids:
            ing = self.ingredients.get(ing_id)
            for name in ing.names if ing else (ing_id,):
                stem = name[:-1] if name.endswith("e") and len(name) > 5 else name
                if len(stem) >= 5 and stem in low:
                    found.add(ing_id)
        return frozenset(found)

    def drug_in(self, match: DrugMatch, valueset_id: str) -> frozenset[str]:
        """The ingredients of a match that belong to a medication value set (memoised: rules ask
        the same question of the same drugs many times per request)."""
        key = (match.ingredients, match.products, valueset_id)
        hit = self._drug_in_cache.get(key)
        if hit is None:
            hit = self._drug_in(match, valueset_id)
            if len(self._drug_in_cache) > 100_000:
                self._drug_in_cache.clear()
            self._drug_in_cache[key] = hit
        return hit

    def valuesets_of(self, match: DrugMatch) -> tuple[str, ...]:
        """The value sets a drug is in (:meth:`drug_in` not empty), memoised by its
        ingredients and products: a request asks a few drugs about dozens of value sets."""
        key = (match.ingredients, match.products)
        hit = self._valuesets_of.get(key)
        if hit is None:
            hit = tuple(vs for vs in self.valuesets if self._drug_in(match, vs))
            if len(self._valuesets_of) > 20_000:
                self._valuesets_of.clear()
            self._valuesets_of[key] = hit
        return hit

    def _drug_in(self, match: DrugMatch, valueset_id: str) -> frozenset[str]:
        vs = self.valuesets[valueset_id]
        hits = set(match.ingredients & vs.ingredients)
        for code in match.products & vs.products:
            hits |= self.products[code].ingredients
        return frozenset(hits)

    # -- conditions, procedures, observations --------------------------------------------------
    def concept_in(self, concept: Any, valueset_id: str) -> bool:
        return self.codes_in(codings(concept), valueset_id)

    def codes_in(self, codes: list[tuple[str, str]], valueset_id: str) -> bool:
        members = self.valuesets[valueset_id].codes
        return any(c in members for c in codes)

    def display(self, ingredient_id: str) -> str:
        ing = self.ingredients.get(ingredient_id)
        return ing.display if ing else ingredient_id


def form_from_text(text: str) -> str | None:
    """The dose form a product's text names (nasal, injection, oral, transdermal), if any."""
    t = text.lower()
    for needle, form in (
        ("nasal", "nasal"),
        ("spray", "nasal"),
        ("inject", "injection"),
        ("infusion", "injection"),
        ("transdermal", "transdermal"),
        ("patch", "transdermal"),
        ("tablet", "oral"),
        ("capsule", "oral"),
        ("oral", "oral"),
    ):
        if needle in t:
            return form
    return None
