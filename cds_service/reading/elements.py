"""Element-level validation: check what a fact reads against FHIR R4B, tolerate the rest.

EHRs send slightly invalid FHIR every day (the CDS Hooks Sandbox writes ``MedicationRequest.category``
as one object instead of an array). A resource is therefore never judged as a whole: each fact
declares the elements it reads (:class:`Reads`), and only those are validated, each against the
``fhir.resources`` R4B type of that element. An invalid element that a fact reads makes that fact
unknown; elements no fact reads get only a shallow shape check, and what it finds is reported as
*ignored* (resource type, element path, count: never a value).

This module is where the rest of the service imports it from; the work is done in:

* :mod:`.reads`           what facts declare they read, and the messages when it is invalid;
* :mod:`.element_walk`    one pass per resource over every element any fact reads in its type;
* :mod:`.element_checks`  one element's verdict: :mod:`.datatypes`' fast check, else the model;
* :mod:`.element_dates`   the patient's own dates inside shared content (a dosage's period);
* :mod:`.kept`            verdicts kept across calls, by content real patients share.
"""

from __future__ import annotations

from .element_walk import first_error, ignored_elements, walk
from .kept import MISS, VERDICT_LIMIT, Kept, key_of, touch
from .reads import MODIFIED, Reads, all_reads, error_for

__all__ = [
    "MISS",
    "MODIFIED",
    "VERDICT_LIMIT",
    "Kept",
    "Reads",
    "all_reads",
    "error_for",
    "first_error",
    "ignored_elements",
    "key_of",
    "touch",
    "walk",
]
