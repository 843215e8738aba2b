"""Resolves the service's prefetch: what the client sent, and what must be fetched.

The four cases of CDS Hooks 2.0.1 §Prefetch, per key:

* a resource or a searchset Bundle: used as is (a Bundle's ``next`` pages are fetched);
* ``null``: the client looked and found nothing — an empty result, not a gap;
* key missing: fetched from ``fhirServer`` with the bearer token;
* an OperationOutcome: the client could not get it — treated like a missing key.

A key that cannot be fetched in time (the call's deadline), within the call's limits, or at all
(an error page, a failed next page) is **not read**: whatever pages of it arrived are dropped (a
first page is not the whole), and it is listed in :attr:`PrefetchResult.unread`. The record then
knows the key is missing, and every fact resting on it is unknown, never "absent"
(``engine/unread.py``): the answer is partial, with a data-gap card.

:class:`DataUnavailable` (HTTP 412, "unable to retrieve the necessary FHIR data") is kept for
calls that cannot be answered at all: the Patient could not be read; no clinical key could be
fetched (every fetch failed, the Patient's aside: the server cannot be accessed); the
``fhirServer`` is refused by policy; a template token cannot be filled; keys are missing and
there is no ``fhirServer``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..errors import DataUnavailable
from ..services import PREFETCH
from .fhir_client import (
    CallBudget,
    FetchPolicy,
    FetchStats,
    FhirClient,
    FhirFetchError,
    bundle_resources,
    next_link,
)

log = logging.getLogger(__name__)

TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


def fill_template(template: str, context: dict[str, Any]) -> str | None:
    """Replace 2.0.1 tokens; ``None`` when a token cannot be resolved (the key is then skipped)."""
    unresolved = False

    def value(match: re.Match[str]) -> str:
        nonlocal unresolved
        name = match.group(1)
        if name.startswith("context."):
            v = context.get(name.removeprefix("context."))
            if isinstance(v, str | int | float) and not isinstance(v, bool):
                return str(v)
        elif name in USER_TOKENS:
            kind, _, ident = str(context.get("userId", "")).partition("/")
            if kind == USER_TOKENS[name] and ident:
                return ident
        unresolved = True
        return ""

    filled = TOKEN.sub(value, template)
    return None if unresolved else filled


@dataclass
class PrefetchResult:
    """Resources per prefetch key, and how each key was obtained (for explanations and logs)."""

    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # key -> prefetched|null|fetched|...
    stats: FetchStats = field(default_factory=FetchStats)
    #: keys that could not be read, and why (``deadline`` | ``limit`` | ``failed``): none of their
    #: resources are in :attr:`resources`, and the facts that rest on them are unknown
    unread: dict[str, str] = field(default_factory=dict)


def is_operation_outcome(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"


def resolve_prefetch(
    request: dict[str, Any],
    *,
    deadline_seconds: float = 3.0,
    connect_timeout: float = 1.0,
    read_timeout: float = 2.0,
    max_pages: int = 50,
    max_bytes: int = 20_000_000,
    max_resources: int = 20_000,
    policy: FetchPolicy | None = None,
    request_id: str | None = None,
    templates: dict[str, str] = PREFETCH,
    narrowing: dict[str, str] | None = None,
) -> PrefetchResult:
    """Resources per key; raises DataUnavailable naming every key that could not be had.

    The limits (bytes, pages, resources) and the deadline hold for the whole call, every key
    together; see :class:`~.fhir_client.CallBudget`. ``narrowing``: query parameters the service
    adds to its own fetch of a key (``{"vitalSigns": "date=ge2026-04-03"}``: only what the rules
    read, ``engine/windows.py``); prefetched data is used as sent.
    """
    prefetch = request.get("prefetch") or {}
    context = request.get("context") or {}
    result = PrefetchResult()
    to_fetch: dict[str, str] = {}
    continuations: dict[str, dict[str, Any]] = {}
    unresolvable: list[str] = []

    for key, template in templates.items():
        value = prefetch.get(key, ...)
        if value is None:
            result.resources[key] = []
            result.origin[key] = "null"
        elif value is ... or is_operation_outcome(value):
            query = fill_template(template, context)
            if query is None:
                unresolvable.append(key)
                continue
            extra = (narrowing or {}).get(key)
            to_fetch[key] = f"{query}&{extra}" if extra and "?" in query else query
            result.origin[key] = "fetched" if value is ... else "fetched-after-operationoutcome"
        elif isinstance(value, dict) and value.get("resourceType") == "Bundle" and _has_next(value):
            continuations[key] = value
            result.origin[key] = "prefetched+paged"
        else:
            result.resources[key] = _resources_of(value)
            result.origin[key] = "prefetched"

    if unresolvable:
        raise DataUnavailable(
            "prefetch template tokens could not be resolved from context for: " + ", ".join(unresolvable),
            unresolvable,
        )
    if not to_fetch and not continuations:
        return result

    fhir_server = request.get("fhirServer")
    if not fhir_server:
        missing = sorted([*to_fetch, *continuations])
        raise DataUnavailable(
            "no fhirServer in the request to fetch data that was not prefetched: " + ", ".join(missing),
            missing,
        )
    policy = policy or FetchPolicy()
    budget = CallBudget(
        deadline_seconds, max_bytes=max_bytes, max_pages=max_pages, max_resources=max_resources
    )
    result.stats = budget.stats
    missing = sorted([*to_fetch, *continuations])
    auth = request.get("fhirAuthorization") or {}
    try:
        client = FhirClient(
            fhir_server,
            budget=budget,
            policy=policy,
            access_token=auth.get("access_token"),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            request_id=request_id,
        )
    except FhirFetchError as exc:
        _log_failures({key: exc for key in missing}, request_id)
        raise DataUnavailable(f"could not fetch {', '.join(missing)}: {exc.reason}", missing) from None
    jobs: dict[str, Callable[[], list[dict[str, Any]]]] = {}
    for key, query in to_fetch.items():
        jobs[key] = partial(client.read, query)
    for key, bundle in continuations.items():
        jobs[key] = partial(client.continue_bundle, bundle)
    jobs = dict(sorted(jobs.items(), key=lambda kv: fetch_rank(kv[0])))
    with client:
        fetched, failures = client.fetch_all(jobs)
    result.resources.update(fetched)
    if failures:
        _log_failures(failures, request_id)
        if not answerable(fetched, failures):
            raise DataUnavailable(_failure_message(failures, policy, request_id), sorted(failures))
        for key, exc in sorted(failures.items()):
            result.unread[key] = exc.kind
            result.origin[key] = f"not-read ({exc.kind})"
            result.resources.pop(key, None)
        log.warning(
            "FHIR fetch partial",
            extra={
                "fields": {
                    "event": "fhir_fetch_partial",
                    "request_id": request_id,
                    "not_read": dict(result.unread),
                    "read": sorted(result.resources),
                }
            },
        )
    return result


#: The order keys are sent in (at most ``MAX_PARALLEL`` at a time; a server that answers one request
#: after another, like the test server, answers them in this order): the Patient, without which
#: there is no answer, then the small keys the contraindication and interaction checks read, the
#: long histories (dispenses, vital signs, scores) last. A key that misses the deadline is then
#: more likely one that TRD counting or monitoring reads than the pregnancy status.
FETCH_ORDER = (
    "patient",
    "pregnancyStatus",
    "allergies",
    "medicationRequests",
    "medicationStatements",
    "medicationAdministrations",
    "conditions",
    "procedures",
    "vitalSigns",
    "medicationDispenses",
    "assessments",
)


def fetch_rank(key: str) -> int:
    return FETCH_ORDER.index(key) if key in FETCH_ORDER else len(FETCH_ORDER)


#: Without the Patient there is no answer: its identity, age, sex and vital status gate every rule.
REQUIRED_KEYS = frozenset({"patient"})


def answerable(fetched: dict[str, Any], failures: dict[str, FhirFetchError]) -> bool:
    """Whether a call whose ``failures`` keys could not be read still gets a (partial) answer.

    Only when some clinical key *was* fetched: if nothing but the Patient could be had, the
    service "cannot access the FHIR server" (CDS Hooks: 412), and an answer that only says so
    would hide it. Never without the Patient (a required key), nor when a key was refused by the
    ``fhirServer`` policy (configuration, the same for every key)."""
    if REQUIRED_KEYS & failures.keys() or any(e.kind == "policy" for e in failures.values()):
        return False
    return any(key not in REQUIRED_KEYS for key in fetched)


def _failure_message(failures: dict[str, FhirFetchError], policy: FetchPolicy, request_id: str | None) -> str:
    """What the caller is told: the keys and the safe reasons (the detail only in development)."""
    reasons = sorted(
        {e.reason if not policy.show_detail else f"{e.reason} ({e.detail})" for e in failures.values()}
    )
    text = f"could not fetch {', '.join(sorted(failures))} from the FHIR server: " + "; ".join(reasons)
    if any(e.kind in ("failed", "limit") for e in failures.values()) and not policy.show_detail:
        text += f" (the service log has the detail under request id {request_id})" if request_id else ""
    return text


def _log_failures(failures: dict[str, FhirFetchError], request_id: str | None) -> None:
    for key, exc in sorted(failures.items()):
        log.warning(
            "FHIR fetch failed",
            extra={
                "fields": {
                    "event": "fhir_fetch_failed",
                    "request_id": request_id,
                    "key": key,
                    "kind": exc.kind,
                    "detail": exc.detail,
                }
            },
        )


def _has_next(bundle: dict[str, Any]) -> bool:
    return next_link(bundle) is not None


def _resources_of(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") == "Bundle":
        return bundle_resources(value)
    return [value]
