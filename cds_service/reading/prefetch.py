"""Resolves the service's prefetch: what the client sent, and what must be fetched.

The four cases of CDS Hooks 2.0.1 §Prefetch, per key:

* a resource or a searchset Bundle: used as is (a Bundle's ``next`` pages are fetched, or, for a
  key the service narrows to the rules' window, the narrowed searches are made instead);
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
from collections.abc import Callable, Mapping
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


def _another_patient(key: str, value: Any, context: dict[str, Any]) -> bool:
    """A prefetched Patient (key ``patient``) whose readable id is not the context's patientId:
    another patient's record (an EHR's mix-up). With a fhirServer it is fetched again; without,
    the record leaves it out and says so (reading/record.py)."""
    if key != "patient" or not isinstance(value, dict) or value.get("resourceType") != "Patient":
        return False
    rid, patient_id = value.get("id"), context.get("patientId")
    return isinstance(rid, str) and bool(rid) and isinstance(patient_id, str) and rid != patient_id


def is_operation_outcome(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"


@dataclass(frozen=True)
class Narrowed:
    """One search the service makes for a key in place of its template's (``engine/windows.py``):
    the template's query with ``params`` added and, when ``codes`` is given, its ``code`` tokens
    replaced by those. A key's searches together ask for everything the rules read of it."""

    params: str = ""
    codes: str | None = None

    def apply(self, query: str) -> str:
        """The narrowed query; the query as is when it has no ``code`` to replace (nothing is lost)."""
        path, sep, given = query.partition("?")
        if not sep:
            return query
        parts = given.split("&")
        if self.codes is not None:
            at = [i for i, p in enumerate(parts) if p.startswith("code=")]
            if len(at) != 1:
                return query
            parts[at[0]] = f"code={self.codes}"
        if self.params:
            parts.append(self.params)
        return f"{path}?{'&'.join(parts)}"


def resolve_prefetch(
    request: dict[str, Any],
    *,
    deadline_seconds: float = 3.0,
    connect_timeout: float = 1.0,
    read_timeout: float | None = None,
    max_pages: int = 50,
    max_bytes: int = 20_000_000,
    max_resources: int = 20_000,
    policy: FetchPolicy | None = None,
    request_id: str | None = None,
    templates: dict[str, str] = PREFETCH,
    narrowing: Mapping[str, tuple[Narrowed, ...]] | None = None,
) -> PrefetchResult:
    """Resources per key; raises DataUnavailable naming every key that could not be had.

    The limits (bytes, pages, resources) and the deadline hold for the whole call, every key
    together; see :class:`~.fhir_client.CallBudget`. Each request may wait what is left of the
    deadline (``read_timeout``, if given, bounds it further). ``narrowing``: the searches the
    service makes for a key instead of its template (only what the rules read,
    ``engine/windows.py``). They replace the key's own fetch, and the paging of a prefetched first
    page: the EHR's ``next`` links would lead through the whole history, the narrowed searches ask
    for what the rules read (the first page is kept). A key without narrowing is fetched, or
    paged, in full.
    """
    prefetch = request.get("prefetch") or {}
    context = request.get("context") or {}
    narrowing = narrowing or {}
    result = PrefetchResult()
    to_fetch: dict[str, list[str]] = {}
    continuations: dict[str, dict[str, Any]] = {}
    first_pages: dict[str, list[dict[str, Any]]] = {}
    unresolvable: list[str] = []
    refetch = bool(request.get("fhirServer"))  # another patient's Patient: fetched if it can be

    for key, template in templates.items():
        value = prefetch.get(key, ...)
        if value is None:
            result.resources[key] = []
            result.origin[key] = "null"
        elif (
            value is ... or is_operation_outcome(value) or (refetch and _another_patient(key, value, context))
        ):
            query = fill_template(template, context)
            if query is None:
                unresolvable.append(key)
                continue
            to_fetch[key] = [part.apply(query) for part in narrowing.get(key) or (Narrowed(),)]
            result.origin[key] = (
                "fetched"
                if value is ...
                else "fetched-after-operationoutcome"
                if is_operation_outcome(value)
                else "fetched-after-other-patient"
            )
        elif isinstance(value, dict) and value.get("resourceType") == "Bundle" and _has_next(value):
            query = fill_template(template, context) if key in narrowing else None
            if query is None:
                continuations[key] = value
                result.origin[key] = "prefetched+paged"
            else:
                first_pages[key] = bundle_resources(value)
                to_fetch[key] = [part.apply(query) for part in narrowing[key]]
                result.origin[key] = "prefetched+narrowed"
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
    jobs: dict[tuple[str, int], Callable[[], list[dict[str, Any]]]] = {}
    for key, queries in to_fetch.items():
        for i, query in enumerate(queries):
            jobs[key, i] = partial(client.read, query)
    for key, bundle in continuations.items():
        jobs[key, 0] = partial(client.continue_bundle, bundle)
    jobs = dict(sorted(jobs.items(), key=lambda kv: (fetch_rank(kv[0][0]), kv[0][1])))
    with client:
        done, failed = client.fetch_all(jobs)
    fetched, failures = _by_key(done, failed, first_pages)
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


def _by_key(
    done: dict[tuple[str, int], list[dict[str, Any]]],
    failed: dict[tuple[str, int], FhirFetchError],
    first_pages: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, FhirFetchError]]:
    """The searches' results joined per key (a prefetched first page first, each resource once); a
    key one of whose searches failed is not read (part of it is not the whole)."""
    failures: dict[str, FhirFetchError] = {}
    for (key, _), exc in sorted(failed.items()):
        failures.setdefault(key, exc)
    parts: dict[str, list[list[dict[str, Any]]]] = {}
    for (key, _), found in sorted(done.items()):
        if key not in failures:
            parts.setdefault(key, [first_pages[key]] if key in first_pages else []).append(found)
    fetched = {key: found[0] if len(found) == 1 else _once(found) for key, found in parts.items()}
    return fetched, failures


def _once(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The resources of several searches of one key, each (type and id) once."""
    seen: set[tuple[Any, Any]] = set()
    out = []
    for part in parts:
        for r in part:
            ident = (r.get("resourceType"), r.get("id"))
            if ident[1] is None or ident not in seen:
                seen.add(ident)
                out.append(r)
    return out


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
