"""Compact patients: a short YAML description of a case, built into FHIR R4 resources and a request.

A *case* (see ``docs/compact-format.md``) names a patient, their conditions, medication history,
observations, procedures and draft orders with short codes (``rx:312941``, ``icd:F33.2``) and
dates relative to the evaluation time (``-6d``, ``today``). :func:`build_request` turns it into the
CDS Hooks 2.0 request a real EHR would send, with every prefetch key of ``services.PREFETCH``
filled as a searchset Bundle and the ``ketamine-cds.evaluation-time`` extension set to ``now``.

Everything here is pure (no I/O except :func:`load_cases`) and deterministic: the same case always
gives byte-identical JSON. Codes are never looked up or invented: a coding carries a ``display``
only when the code is in :data:`DISPLAYS`, a table copied from the project's verified clinical sources.

The package is split by job: :mod:`.vocabulary` (code systems, displays, allowed keys), :mod:`.dates`,
:mod:`.datatypes` (codes, quantities, dosage), :mod:`.resources` (the FHIR resources of a case) and
:mod:`.request` (the CDS Hooks request, case files). Everything is importable from here, as before.
"""

from __future__ import annotations

from .datatypes import coding, concept, dosage, quantity
from .dates import (
    add_months,
    age_at,
    birth_date_for_age,
    format_datetime,
    parse_now,
    resolve_date,
    resolve_datetime,
    to_date,
)
from .errors import CaseError
from .request import build_request, hook_instance, load_cases, searchset, select_for_key
from .resources import build_draft_orders, build_resources, order_context
from .vocabulary import DISPLAYS, HOOKS, SYSTEMS

__all__ = [
    "DISPLAYS",
    "HOOKS",
    "SYSTEMS",
    "CaseError",
    "add_months",
    "age_at",
    "birth_date_for_age",
    "build_draft_orders",
    "build_request",
    "build_resources",
    "coding",
    "concept",
    "dosage",
    "format_datetime",
    "hook_instance",
    "load_cases",
    "order_context",
    "parse_now",
    "quantity",
    "resolve_date",
    "resolve_datetime",
    "searchset",
    "select_for_key",
    "to_date",
]
