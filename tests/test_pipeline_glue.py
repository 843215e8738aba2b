"""pipeline.run's per-call glue: the prefetch templates are worked out once per rule set, and the
fetch narrowing only when a call fetches (a fully prefetched call never needs it); what a fetching
call asks for is unchanged (tests/test_fetch_windows.py checks the narrowed searches themselves)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from cds_service import pipeline
from cds_service.config import Settings
from cds_service.engine.loader import load_ruleset
from cds_service.engine.windows import fetch_narrowing
from cds_service.errors import DataUnavailable
from cds_service.services import prefetch_for

from .conftest import RULES, load_example


@pytest.fixture(scope="module")
def ruleset() -> Any:
    return load_ruleset(RULES)


def settings() -> Settings:
    return Settings(rules_dir=RULES, insecure_no_auth=True, allow_time_override=True, hot_reload=False)


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def narrowing(ruleset: Any, now: Any) -> Any:
        calls.append(1)
        return fetch_narrowing(ruleset, now)

    monkeypatch.setattr(pipeline, "fetch_narrowing", narrowing)
    return calls


def test_a_fully_prefetched_call_never_works_out_the_narrowing(ruleset, monkeypatch) -> None:
    calls = counting(monkeypatch)
    outcome = pipeline.run(load_example("v01-clear-trd-eligible"), ruleset, settings())
    assert outcome.response["cards"] and calls == []


def test_a_call_that_must_fetch_works_it_out_once(ruleset, monkeypatch) -> None:
    calls = counting(monkeypatch)
    body = load_example("v01-clear-trd-eligible")
    del body["prefetch"]["vitalSigns"]  # to be fetched, and there is no fhirServer: a 412 naming it
    with pytest.raises(DataUnavailable) as exc:
        pipeline.run(body, ruleset, settings())
    assert "vitalSigns" in exc.value.missing and calls == [1]


def test_lazy_narrowing_is_the_mapping_it_stands_for(ruleset) -> None:
    now = pipeline.evaluation_time({}, False)
    lazy = pipeline.LazyNarrowing(lambda: fetch_narrowing(ruleset, now))
    assert bool(lazy) and dict(lazy) == fetch_narrowing(ruleset, now)
    assert ("vitalSigns" in lazy) and lazy.get("no such key") is None
    assert bool(pipeline.LazyNarrowing(dict))  # even empty: `narrowing or {}` must not evaluate it


def test_templates_are_the_rule_sets_and_kept_per_rule_set(ruleset) -> None:
    assert pipeline.templates_for(ruleset) == prefetch_for(ruleset.observation_kinds)
    assert pipeline.templates_for(ruleset) is pipeline.templates_for(ruleset)
    reloaded = SimpleNamespace(observation_kinds=ruleset.observation_kinds)  # another rule set object
    assert pipeline.templates_for(reloaded) is not pipeline.templates_for(ruleset)


def test_missing_medications_are_looked_for_only_when_there_is_a_fhir_server(ruleset, monkeypatch) -> None:
    from cds_service.reading import medications

    looked: list[bool] = []

    def fetch_missing(record: Any, request: dict[str, Any], **kwargs: Any) -> set[str]:
        looked.append("fhirServer" in request)
        return medications.fetch_missing(record, request, **kwargs)

    monkeypatch.setattr(pipeline, "fetch_missing", fetch_missing)
    body = load_example("v01-clear-trd-eligible")
    without = pipeline.run(body, ruleset, settings())
    assert looked == []  # nothing could be read: the references are not even looked for
    body["fhirServer"] = "http://127.0.0.1:9"  # unreachable: a fetch, if any, fails fast
    pipeline.run(body, ruleset, settings())
    assert looked == [True]
    assert without.response["cards"]
