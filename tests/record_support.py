"""Helpers for tests of the reading layer: facts from a raw CDS request, and a predicate run on them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import load_ruleset
from cds_service.engine.med_windows import medication_horizon
from cds_service.engine.predicates import CompileContext, Env, Result, compile_node
from cds_service.pipeline import evaluation_time
from cds_service.reading.facts import Facts
from cds_service.reading.fhir_client import FetchPolicy
from cds_service.reading.prefetch import resolve_prefetch
from cds_service.reading.record import PatientRecord

from .conftest import RULES

#: the test FHIR servers run on 127.0.0.1 over plain http
LOCAL_FHIR = FetchPolicy(allow_http=True, allow_loopback=True, show_detail=True)


def facts_of(request: dict[str, Any], now: datetime | None = None) -> Facts:
    ruleset = load_ruleset(RULES)
    record = PatientRecord.from_prefetch(
        resolve_prefetch(request, policy=LOCAL_FHIR).resources, request["context"]
    )
    when = now or evaluation_time(request, True)
    horizon = medication_horizon(ruleset)  # as the pipeline reads the record
    return Facts(record, ruleset.terminology, ruleset.observation_kinds, when, request["hook"], horizon)


def run_predicate(spec: dict[str, Any], facts: Facts) -> Result:
    ruleset = load_ruleset(RULES)
    ctx = CompileContext(
        {},
        {vs.id: vs.kind for vs in ruleset.terminology.valuesets.values()},
        set(ruleset.observation_kinds),
        set(ruleset.definitions),
    )
    return compile_node(spec, ctx)(Env(facts, "US", ruleset.definitions))


def fired(request: dict[str, Any]) -> set[str]:
    ruleset = load_ruleset(RULES)
    facts = facts_of(request)
    return {o.rule.id for o in evaluate(ruleset, facts).fired}


def run_request(request: dict[str, Any]):
    """The whole pipeline on a request (bundled rules, evaluation-time extension honoured)."""
    from cds_service import pipeline
    from cds_service.config import Settings

    return pipeline.run(request, load_ruleset(RULES), Settings(rules_dir=RULES, allow_time_override=True))


def weight(request: dict[str, Any]) -> dict[str, Any]:
    """The request's one body-weight Observation (LOINC 29463-7) in its vitalSigns prefetch."""
    (found,) = [
        e["resource"]
        for e in request["prefetch"]["vitalSigns"]["entry"]
        if any(c.get("code") == "29463-7" for c in e["resource"]["code"]["coding"])
    ]
    return found


def bp_panels(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's panels (Observations with components) in its vitalSigns prefetch."""
    return [e["resource"] for e in request["prefetch"]["vitalSigns"]["entry"] if "component" in e["resource"]]
