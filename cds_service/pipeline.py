"""One CDS request end to end: FHIR access → record → facts → rules → cards.

Shared by the HTTP endpoint, ``ketamine-cds evaluate``/``explain`` and the playground, so all of
them give the same answer for the same request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .cards import render_cards
from .config import Settings
from .engine.evaluate import Evaluation, evaluate
from .engine.loader import RuleSet
from .engine.med_windows import medication_horizon
from .engine.windows import fetch_narrowing
from .errors import ApiError
from .reading.facts import Facts, parse_datetime
from .reading.fhir_client import FetchPolicy
from .reading.medications import fetch_missing
from .reading.prefetch import Narrowed, PrefetchResult, resolve_prefetch
from .reading.record import PatientRecord
from .services import prefetch_for

TIME_EXTENSION = "ketamine-cds.evaluation-time"
# Response extension: elements of the resources read that were invalid but that no fact reads, so
# they were ignored (resource type, element path, reason, count; never a value or an id).
IGNORED_EXTENSION = "ketamine-cds.ignored-elements"
#: Every card names the rule set that produced it (its content fingerprint, short form).
RULES_VERSION_EXTENSION = "ketamine-cds.rules-version"


@dataclass
class Outcome:
    response: dict[str, Any]
    evaluation: Evaluation
    prefetch: PrefetchResult
    timings: dict[str, float] = field(default_factory=dict)


def evaluation_time(request: dict[str, Any], allow_override: bool) -> datetime:
    ext = request.get("extension") or {}
    if allow_override and isinstance(ext, dict) and TIME_EXTENSION in ext:
        when = parse_datetime(ext[TIME_EXTENSION])
        if when is None or not 1900 <= when.year <= 2200:
            raise ApiError(
                400,
                f"extension.{TIME_EXTENSION} must be a FHIR dateTime between 1900 and 2200",
                f"extension.{TIME_EXTENSION}",
            )
        return when
    return datetime.now(UTC)


class LazyNarrowing(Mapping[str, tuple[Narrowed, ...]]):
    """``fetch_narrowing(ruleset, now)``, worked out when a key is first looked up: only a call that
    fetches (a key not prefetched, or paged) needs it, and it cost ~0.1 M instructions per call.
    Always true, so that ``narrowing or {}`` keeps it unevaluated."""

    def __init__(self, compute: Callable[[], dict[str, tuple[Narrowed, ...]]]) -> None:
        self._compute: Callable[[], dict[str, tuple[Narrowed, ...]]] | None = compute
        self._value: dict[str, tuple[Narrowed, ...]] = {}

    def _get(self) -> dict[str, tuple[Narrowed, ...]]:
        if self._compute is not None:
            self._value, self._compute = self._compute(), None
        return self._value

    def __getitem__(self, key: str) -> tuple[Narrowed, ...]:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __bool__(self) -> bool:
        return True


_templates: tuple[RuleSet, dict[str, str]] | None = None


def templates_for(ruleset: RuleSet) -> dict[str, str]:
    """``prefetch_for(ruleset.observation_kinds)``, worked out once per rule set (~75 k instructions;
    it depends on the rule set's codes alone). Read it, never change it."""
    global _templates
    last = _templates
    if last is None or last[0] is not ruleset:
        last = _templates = (ruleset, prefetch_for(ruleset.observation_kinds))
    return last[1]


def fetch_policy(settings: Settings, fhir_origins: tuple[str, ...] | None = None) -> FetchPolicy:
    """The fhirServer policy of one call (docs/security.md, "FHIR server policy")."""
    return FetchPolicy(
        allow_http=settings.fhir_allow_http or settings.insecure_no_auth,
        allow_loopback=settings.fhir_allow_loopback,
        allowed_origins=fhir_origins,
        # an origin the operator allowlisted for this issuer may hear why its fetch failed
        show_detail=settings.fhir_error_detail or fhir_origins is not None,
    )


def run(
    request: dict[str, Any],
    ruleset: RuleSet,
    settings: Settings,
    *,
    request_id: str | None = None,
    jurisdiction: str | None = None,
    fhir_origins: tuple[str, ...] | None = None,
) -> Outcome:
    """Raises DataUnavailable (→ 412) when needed data can be neither prefetched nor fetched.

    ``fhir_origins``: the FHIR servers the calling issuer is allowlisted for (None: any allowed
    by the settings' policy)."""
    t0 = time.perf_counter()
    now = evaluation_time(request, settings.allow_time_override)
    policy = fetch_policy(settings, fhir_origins)
    prefetched = resolve_prefetch(
        request,
        deadline_seconds=settings.fhir_deadline,
        connect_timeout=settings.fhir_connect_timeout,
        read_timeout=settings.fhir_read_timeout,
        max_pages=settings.fhir_max_pages,
        max_bytes=settings.fhir_max_bytes,
        max_resources=settings.fhir_max_resources,
        policy=policy,
        request_id=request_id,
        templates=templates_for(ruleset),
        narrowing=LazyNarrowing(lambda: fetch_narrowing(ruleset, now)),
    )
    t1 = time.perf_counter()
    context = request["context"]
    record = PatientRecord.from_prefetch(prefetched.resources, context)
    record.unread.update(prefetched.unread)  # a partial answer: what rests on these is unknown
    # Medications referenced but neither contained nor included: one read, within what is left of
    # the FHIR deadline; on failure the orders keep their display and the gap is said in a card.
    # Without a fhirServer there is nothing to read from (fetch_missing would look for the missing
    # references, ~80 k instructions for a typical record, then do nothing).
    if isinstance(request.get("fhirServer"), str):
        fetch_missing(
            record,
            request,
            deadline_seconds=settings.fhir_deadline - (time.perf_counter() - t0),
            connect_timeout=settings.fhir_connect_timeout,
            read_timeout=settings.fhir_read_timeout,
            request_id=request_id,
            policy=policy,
        )
    facts = Facts(
        record,
        ruleset.terminology,
        ruleset.observation_kinds,
        now,
        request["hook"],
        medication_horizon(ruleset),  # medication records no rule can need are not read
    )
    ev = evaluate(ruleset, facts, jurisdiction=jurisdiction)
    t2 = time.perf_counter()
    cards = render_cards(ev, context.get("patientId"))
    for card in cards:
        card.setdefault("extension", {})[RULES_VERSION_EXTENSION] = ruleset.version
    t3 = time.perf_counter()
    response: dict[str, Any] = {"cards": cards}
    ignored = record.ignored_report()
    if ignored:
        response["extension"] = {IGNORED_EXTENSION: ignored}
    return Outcome(
        response,
        ev,
        prefetched,
        {"fhir_ms": (t1 - t0) * 1000, "rules_ms": (t2 - t1) * 1000, "cards_ms": (t3 - t2) * 1000},
    )
