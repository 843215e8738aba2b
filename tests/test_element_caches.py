"""What the element layer keeps across calls: content patients share, never a patient's dates.

Verdicts kept by content make a new patient cheap only when real patients share that content
(codes, units, a drug's usual sig). A date is the patient's own: a cache keyed on it hits only when
a benchmark repeats a record with new ids, and it would keep the patient's dates in the process.
"""

from __future__ import annotations

import gc
import json
import re
import sys
import types
from typing import Any

from .conftest import load_example
from .test_tolerant_reading import run

_MARKED = re.compile(r"1917-\d{2}-\d{2}")


def _kept_by_the_service(marked: re.Pattern[str] = _MARKED) -> list[str]:
    """Every string or bytes reachable from the service's modules that holds a marked text."""
    stack: list[Any] = [m.__dict__ for n, m in list(sys.modules.items()) if n.startswith("cds_service") and m]
    seen: set[int] = set()
    found: list[str] = []
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, types.ModuleType | type):
            continue
        seen.add(id(o))
        if isinstance(o, str | bytes):
            text = o.decode("latin-1") if isinstance(o, bytes) else o
            if marked.search(text):
                found.append(text[:60])
        elif isinstance(o, dict):
            stack += [*o.keys(), *o.values()]
        elif isinstance(o, list | tuple | set | frozenset):
            stack += list(o)
        else:
            stack += gc.get_referents(o)  # closures, lru_cache tables, instances
    return found


def test_no_cache_keeps_a_patients_dates() -> None:
    # a record whose every date is one no other test uses: after the call, none of them may be
    # reachable from the service (main kept each date string and every Period's JSON as a key)
    text = json.dumps(load_example("v08-phenelzine"))
    request = json.loads(re.sub(r'"\d{4}-(\d{2}-\d{2})', r'"1917-\1', text))
    out = run(request)
    assert out.evaluation.facts.record.size > 5
    del out, request
    gc.collect()
    assert _kept_by_the_service() == []


# matched by a pattern that does not match itself, and built in the test (not a module global), so
# that only the words a record carried can be found
_SAID = re.compile(r"Zebulon\sQuarkworth")


def _say(resource: dict[str, Any], words: str) -> None:
    """Free text in every place a record carries it: the resource's own, its codes', its sig's."""
    for key in ("code", "medicationCodeableConcept", "statusReason", "category", "reasonCode"):
        for concept in resource.get(key) if isinstance(resource.get(key), list) else [resource.get(key)]:
            if isinstance(concept, dict):
                concept["text"] = f"{words} {concept.get('text', '')}"
    resource.setdefault("statusReason", {"text": words})
    resource["note"] = [{"text": words}]
    resource["extension"] = [{"url": "http://example.org/said", "valueString": words}]
    for key in ("dosageInstruction", "dosage"):
        dosages = resource.get(key)
        for d in dosages if isinstance(dosages, list) else [dosages] if isinstance(dosages, dict) else []:
            d["text"], d["patientInstruction"] = words, words
            d["additionalInstruction"] = [{"text": words}]


def test_no_cache_keeps_a_patients_words() -> None:
    # free text can say anything about the patient: after the call, none of it may be reachable
    # from the service (main kept statusReason, sig and note texts as verdict keys)
    words = " ".join(["Zebulon", "Quarkworth", "said"])
    request = load_example("v08-phenelzine")
    for value in request["prefetch"].values():
        for entry in (value or {}).get("entry") or []:
            if entry["resource"]["resourceType"] != "Patient":
                _say(entry["resource"], words)
    for order in request["context"]["draftOrders"]["entry"]:
        _say(order["resource"], words)
    out = run(request)
    assert out.evaluation.facts.record.size > 5 and out.response["cards"]
    del out, request, words
    gc.collect()
    assert _kept_by_the_service(_SAID) == []


def test_kept_verdicts_are_a_bounded_lru() -> None:
    from cds_service.reading.elements import VERDICT_LIMIT, Kept

    kept = Kept(limit=3)
    for k in (b"a", b"b", b"c"):
        kept.put(k, k)
    assert kept.get(b"a") == b"a"  # used: now the most recent
    kept.put(b"d", b"d")  # the least recently used (b) leaves, not everything
    assert list(kept.data) == [b"c", b"a", b"d"]
    assert VERDICT_LIMIT <= 10_000


def test_a_resource_is_walked_once_for_all_the_facts_that_read_it() -> None:
    from cds_service.reading.elements import Reads
    from cds_service.reading.record import PatientRecord

    first, second = Reads("Procedure", "status"), Reads("Procedure", "code")
    res = {"resourceType": "Procedure", "status": "completed", "code": {"coding": "not a list"}}
    record = PatientRecord(by_type={"Procedure": [res]})
    assert record.readable(res, first)
    assert not record.readable(res, second)
    assert [p.message.split(":")[0] for p in record.problems] == ["code.coding"]
    assert len(record._failing) == 1  # one walk answered both


def test_written_text_is_kept_only_as_a_placeholder() -> None:
    """Two sigs or codes that differ only in what a person wrote share one kept verdict, whose key
    holds none of the words; a text the string check cannot vouch for, a note or an extension is
    never a key (checked afresh)."""
    from cds_service.reading.elements import key_of

    code = {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}
    a = key_of({**code, "text": "BP taken by Anna after the fall"})
    b = key_of({**code, "text": "BP"})
    assert a is not None and a == b and b"Anna" not in a
    assert key_of({**code, "text": 5}) is None  # not a string: the model judges it, nothing kept
    assert key_of({**code, "extension": [{"url": "x", "valueString": "Anna"}]}) is None
    assert key_of({"text": "t", "note": [{"text": "Anna"}]}) is None
    assert key_of(code) is not None


def _med_records(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        entry["resource"]
        for value in request["prefetch"].values()
        for entry in (value or {}).get("entry") or []
        if entry["resource"]["resourceType"].startswith("Medication")
    ]


def test_no_cache_keeps_words_written_under_an_element_r4b_does_not_define() -> None:
    # real EHRs add their own keys ("remark", "comments"): such an element may say anything about the
    # patient, and main kept it, as part of the JSON key of a shared element's verdict (the drug's
    # concept, the sig), in the worker's cross-call tables
    words = " ".join(["Zebulon", "Quarkworth", "said"])
    request = load_example("v08-phenelzine")
    records = _med_records(request)
    assert records
    for res in records:
        concept = res.get("medicationCodeableConcept")
        if isinstance(concept, dict):
            concept["remark"] = words
        for key in ("dosageInstruction", "dosage"):
            dosages = res.get(key)
            for d in dosages if isinstance(dosages, list) else [dosages] if isinstance(dosages, dict) else []:
                d["remarks"] = words
    out = run(request)
    assert out.evaluation.facts.record.size > 5 and out.response["cards"]
    del out, request, records, words
    gc.collect()
    assert _kept_by_the_service(_SAID) == []


def test_no_cache_keeps_dates_in_a_misshapen_timing() -> None:
    # a sig's period of use written where R4B does not put it (``repeat`` as an array, a bounds key
    # misspelled): still the patient's own dates, never a key (main kept them with the sig)
    request = load_example("v08-phenelzine")
    dosages = [
        d
        for res in _med_records(request)
        for key in ("dosageInstruction", "dosage")
        for d in (res.get(key) if isinstance(res.get(key), list) else [res.get(key)])
        if isinstance(d, dict)
    ]
    assert dosages
    for i, d in enumerate(dosages):
        period = {"start": f"1917-0{1 + i % 9}-1{i % 10}"}
        timing = d.setdefault("timing", {})
        if i % 2:
            timing["repeat"] = [{"boundsPeriod": period}]
        else:
            timing.setdefault("repeat", {})["boundsPeriodStart"] = period
    out = run(request)
    assert out.evaluation.facts.record.size > 5
    del out, request, dosages
    gc.collect()
    assert _kept_by_the_service() == []
