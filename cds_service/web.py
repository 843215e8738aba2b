"""Built-in pages for integrators and informaticians: overview, rule catalogue and playground.

Rendered on the server (autoescaped Jinja) from the same loaded rule set and the same pipeline the
CDS endpoints use, so what the pages show is what the service does. The pages load nothing from
the network and work without JavaScript; a strict Content-Security-Policy keeps it that way.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response, abort, current_app, g, render_template, request
from markdown_it import MarkdownIt
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from . import bundled, pipeline
from .cards import EXPLANATION
from .engine.evaluate import Outcome
from .engine.loader import SPECIAL_FILES, Rule, RuleSet
from .errors import ApiError, DataUnavailable
from .services import SERVICES, prefetch_for
from .validation import parse_json, validate_request

log = logging.getLogger(__name__)
web = Blueprint("web", __name__, template_folder="templates")

JURISDICTIONS = ("US", "CA", "UK", "NO")
INDICATORS = ("critical", "warning", "info")
STATUSES = ("fired", "unknown", "not-fired", "skipped")
PARAM_REF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)|params\.([A-Za-z_][A-Za-z0-9_]*)")


def _markdown() -> MarkdownIt:
    """CommonMark plus GFM tables and strikethrough; raw HTML is escaped, never passed through."""
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])

    def link_open(self: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
        # Card links leave the page, as they would leave an EHR.
        tokens[idx].attrSet("target", "_blank")
        tokens[idx].attrSet("rel", "noopener noreferrer")
        return str(self.renderToken(tokens, idx, options, env))

    md.add_render_rule("link_open", link_open)
    return md


MARKDOWN = _markdown()


def render_markdown(text: str | None) -> Markup:
    """Card detail as HTML; safe to mark up because markdown-it escapes all raw HTML."""
    return Markup(MARKDOWN.render(text or ""))


# -- plumbing ---------------------------------------------------------------------------------------
def _state() -> Any:
    return current_app.extensions["ketamine_cds"]


@web.before_request
def _nonce() -> None:
    g.csp_nonce = secrets.token_urlsafe(16)


@web.after_request
def _headers(resp: Response) -> Response:
    """Only inline code carrying this response's nonce runs; nothing is fetched from elsewhere."""
    nonce = g.get("csp_nonce", "")
    resp.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; img-src 'self' data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


@web.errorhandler(Exception)
def _error_page(exc: Exception) -> tuple[str, int]:
    """HTML errors for people on these pages (the CDS endpoints keep their JSON errors)."""
    if isinstance(exc, HTTPException):
        status, message = exc.code or 500, exc.description or ""
    elif isinstance(exc, ApiError):
        status, message = exc.status, exc.message
    else:
        log.exception("unexpected error on a web page (request %s)", g.get("request_id"))
        status = 500
        message = f"Internal error (request id {g.get('request_id', '?')}); see the server log."
    titles = {404: "Not found", 405: "Method not allowed", 500: "Internal error"}
    return render_template(
        "error.html", status=status, title=titles.get(status, "Error"), message=message
    ), status


@web.app_context_processor
def _rules_version() -> dict[str, Any]:
    """Every page's footer names the rule set in service (its content fingerprint)."""
    st = current_app.extensions.get("ketamine_cds")
    return {"rules_version": st.rules.get().version} if st is not None else {}


# -- overview ---------------------------------------------------------------------------------------
@web.get("/")
def index() -> str:
    st = _state()
    ruleset = st.rules.get()
    base = (st.settings.public_base_url or request.host_url).rstrip("/")
    services = [s.discovery(prefetch_for(ruleset.observation_kinds)) for s in SERVICES.values()]
    prefetch: dict[tuple[str, str], list[str]] = {}
    for s in services:  # one row per template, naming the services that ask for it
        for key, template in s["prefetch"].items():
            prefetch.setdefault((key, template), []).append(s["id"])
    return render_template(
        "index.html",
        services=services,
        prefetch=[(key, template, ids) for (key, template), ids in prefetch.items()],
        discovery_url=f"{base}/cds-services",
        ruleset=ruleset,
        settings=st.settings,
        rejected=len(st.rules.last_errors),
    )


# -- rule catalogue ---------------------------------------------------------------------------------
@dataclass
class RawRuleSet:
    """What the compiled rule set does not keep: file descriptions, file defaults, site overrides."""

    file_descriptions: dict[str, str] = field(default_factory=dict)
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    definitions: dict[str, Any] = field(default_factory=dict)
    common_params: dict[str, Any] = field(default_factory=dict)
    site: dict[str, Any] = field(default_factory=dict)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        log.warning("catalogue: cannot read %s: %s", path, exc)
        return None


@lru_cache(maxsize=4)
def _raw(rules_dir: Path, site_path: Path, fingerprint: str) -> RawRuleSet:
    """Cached per rule-set fingerprint, so a hot reload refreshes it."""
    raw = RawRuleSet()
    for path in sorted(p for p in rules_dir.glob("*.yaml") if p.name not in SPECIAL_FILES):
        data = _read_yaml(path)
        if not isinstance(data, dict):
            continue
        raw.file_descriptions[path.name] = str(data.get("description") or "")
        for spec in data.get("rules") or []:
            if isinstance(spec, dict) and "id" in spec:
                raw.specs[str(spec["id"])] = spec
    common = _read_yaml(rules_dir / "common.yaml")
    if isinstance(common, dict):
        raw.definitions = common.get("definitions") or {}
        raw.common_params = common.get("params") or {}
    site = _read_yaml(site_path)
    raw.site = site if isinstance(site, dict) else {}
    return raw


def _refs(node: Any, definitions: dict[str, Any], seen: set[str]) -> set[str]:
    """Names of the common.yaml definitions a condition uses, transitively."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ref" and isinstance(value, str):
                if value not in seen:
                    seen.add(value)
                    _refs(definitions.get(value), definitions, seen)
            else:
                _refs(value, definitions, seen)
    elif isinstance(node, list):
        for item in node:
            _refs(item, definitions, seen)
    return seen


def _flags(source: dict[str, Any]) -> list[str]:
    """Evidence a reader must not take at face value."""
    out = [source["evidence"]] if source.get("evidence") in ("seed-only", "unverified") else []
    if source.get("verified") is False:
        out.append("verified: false")
    return out


def _rule_view(rule: Rule, ruleset: RuleSet, raw: RawRuleSet, shared: dict[str, Any]) -> dict[str, Any]:
    spec = raw.specs.get(rule.id, {})
    defaults = spec.get("params") or {}
    refs = sorted(_refs(spec.get("when"), raw.definitions, set()))
    needs = set(rule.needs)
    for name in refs:
        if name in ruleset.definitions:
            needs |= ruleset.definitions[name].needs()
    valuesets = sorted(n.partition(":")[2] for n in needs if n.startswith("valueset:"))
    observations = sorted(n.partition(":")[2] for n in needs if n.startswith("observation:"))
    text = json.dumps([spec, *(raw.definitions.get(r) for r in refs)], default=str)
    shared_used = sorted(({a or b for a, b in PARAM_REF.findall(text)} & set(shared)) - set(defaults))
    params = [
        {
            "name": k,
            "value": rule.params.get(k),
            "default": defaults[k],
            "overridden": rule.params.get(k) != defaults[k],
        }
        for k in defaults
    ]
    params += [
        {
            "name": k,
            "value": rule.params.get(k, shared[k]),
            "default": raw.common_params.get(k),
            "overridden": rule.params.get(k, shared[k]) != raw.common_params.get(k),
            "shared": True,
        }
        for k in shared_used
    ]
    sources = [rule.source, *rule.also_cites]
    flags = sorted({f for s in sources for f in _flags(s)})
    search = " ".join(
        [rule.id, rule.title, rule.file, rule.kind, rule.panel or "", rule.indicator, *rule.hooks]
        + [*rule.jurisdictions, rule.source.get("label", ""), rule.source.get("guideline", "")]
        + [s.get("evidence", "") for s in sources]
        + flags
        + valuesets
        + observations
        + ([] if rule.enabled else ["disabled"])
    ).lower()
    return {
        "rule": rule,
        "params": params,
        "refs": refs,
        "valuesets": valuesets,
        "observations": observations,
        "flags": flags,
        "site_override": (raw.site.get("rules") or {}).get(rule.id),
        "search": search,
    }


@web.get("/rules")
def rules() -> str:
    st = _state()
    ruleset: RuleSet = st.rules.get()
    raw = _raw(ruleset.rules_dir, st.rules.site_path, ruleset.fingerprint)
    shared = {**raw.common_params, **(raw.site.get("params") or {})}
    query = request.args.get("q", "").strip()
    views = [_rule_view(r, ruleset, raw, shared) for r in ruleset.rules]
    for v in views:  # every rule is rendered, so the live filter can bring hidden ones back
        v["shown"] = query.lower() in v["search"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for v in sorted(views, key=lambda v: v["rule"].file):  # stable: rule order within a file
        groups.setdefault(v["rule"].file, []).append(v)
    used_by: dict[str, list[str]] = {}
    for v in views:
        for name in v["valuesets"] + [f"obs:{o}" for o in v["observations"]]:
            used_by.setdefault(name, []).append(v["rule"].id)
    shared_rows = [
        {
            "name": k,
            "default": raw.common_params.get(k),
            "value": shared[k],
            "overridden": shared[k] != raw.common_params.get(k),
        }
        for k in shared
    ]
    return render_template(
        "rules.html",
        ruleset=ruleset,
        groups=groups,
        descriptions=raw.file_descriptions,
        total=len(views),
        shown=sum(v["shown"] for v in views),
        query=query,
        shared_rows=shared_rows,
        site_rules=raw.site.get("rules") or {},
        valuesets=sorted(ruleset.terminology.valuesets.values(), key=lambda vs: vs.id),
        observation_kinds=ruleset.observation_kinds,
        used_by=used_by,
        rejected=st.rules.last_errors,
        site_file=st.rules.site_path.name,
    )


# -- playground -------------------------------------------------------------------------------------
@dataclass
class Example:
    name: str
    path: Path
    hook: str
    title: str = ""
    description: str = ""
    jurisdiction: str = ""


def examples_dir(ruleset: RuleSet) -> Path:
    """Worked requests: a ``fhir_examples/`` folder next to the rules directory served, else the
    bundled examples (so a site's own rules folder can bring its own examples)."""
    beside = ruleset.rules_dir.parent / "fhir_examples"
    return beside if beside.is_dir() else bundled.examples_dir()


def list_examples(folder: Path, rules_dir: Path) -> dict[str, Example]:
    if not folder.is_dir():
        return {}
    cases = _vignettes(rules_dir / "tests", _mtimes(rules_dir / "tests"))
    out: dict[str, Example] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            body = json.loads(path.read_bytes())
            hook = str(body.get("hook", "?")) if isinstance(body, dict) else "?"
        except (OSError, ValueError):
            hook = "?"
        case = cases.get(path.stem, {})
        out[path.stem] = Example(path.stem, path, hook, **case)
    return out


def _mtimes(folder: Path) -> tuple[tuple[str, int], ...]:
    return (
        tuple((p.name, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.yaml")))
        if folder.is_dir()
        else ()
    )


@lru_cache(maxsize=4)
def _vignettes(folder: Path, mtimes: tuple[tuple[str, int], ...]) -> dict[str, dict[str, str]]:
    """Titles and intended jurisdictions of the rule-test cases the example files are built from."""
    out: dict[str, dict[str, str]] = {}
    for name, _ in mtimes:
        data = _read_yaml(folder / name)
        for case in (data.get("cases") if isinstance(data, dict) else None) or []:
            if isinstance(case, dict) and isinstance(case.get("id"), str):
                site = case.get("site") if isinstance(case.get("site"), dict) else {}
                out[case["id"]] = {
                    "title": str(case.get("title") or ""),
                    "description": str(case.get("description") or ""),
                    "jurisdiction": str(site.get("jurisdiction") or ""),
                }
    return out


@dataclass
class RunResult:
    example: Example
    jurisdiction: str
    status: int = 200
    error: str = ""
    error_field: str | None = None
    missing: list[str] = field(default_factory=list)
    cards: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    response_json: str = ""
    request_json: str = ""


def run_example(example: Example, ruleset: RuleSet, settings: Any, jurisdiction: str | None) -> RunResult:
    """The service call the EHR would make, in-process; 400 and 412 become messages, not errors."""
    result = RunResult(example, jurisdiction or ruleset.jurisdiction)
    try:
        raw = example.path.read_bytes()
    except OSError as exc:
        result.status, result.error = 404, f"cannot read {example.path.name}: {exc.strerror}"
        return result
    result.request_json = _pretty_text(raw)
    try:
        body = parse_json(raw)
        hook = body.get("hook") if isinstance(body, dict) else None
        service = SERVICES.get(str(hook))
        if service is None:
            raise ApiError(400, f"hook {hook!r} is not served here", "hook")
        request_body = validate_request(body, service)
        outcome = pipeline.run(
            request_body,
            ruleset,
            replace(settings, allow_time_override=True),
            request_id=g.get("request_id"),
            jurisdiction=jurisdiction,
        )
    except ApiError as exc:
        result.status, result.error, result.error_field = exc.status, exc.message, exc.field
        return result
    except DataUnavailable as exc:
        result.status, result.error, result.missing = 412, exc.message, list(exc.missing)
        return result
    ev = outcome.evaluation
    result.cards = [_card_view(c) for c in outcome.response["cards"]]
    result.outcomes = ev.outcomes
    result.response_json = json.dumps(outcome.response, indent=2, ensure_ascii=False)
    result.info = {
        "hook": ev.facts.hook,
        "now": ev.facts.now.isoformat(),
        "timings": {k: round(v, 1) for k, v in outcome.timings.items()},
        "origin": outcome.prefetch.origin,
        "problems": ev.facts.record.problems,
        "counts": {s: sum(o.status == s for o in ev.outcomes) for s in STATUSES},
    }
    return result


def _pretty_text(raw: bytes) -> str:
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _card_view(card: dict[str, Any]) -> dict[str, Any]:
    explanation = (card.get("extension") or {}).get(EXPLANATION) or {}
    why = [
        {
            **entry,
            "facts": [
                (key, value if isinstance(value, str | int | float | bool) else None, _pretty(value))
                for key, value in (entry.get("facts") or {}).items()
            ],
        }
        for entry in explanation.get("rules") or []
    ]
    indicator = card.get("indicator") if card.get("indicator") in INDICATORS else "info"
    return {**card, "indicator": indicator, "detail_html": render_markdown(card.get("detail")), "why": why}


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@web.route("/playground", methods=["GET", "POST"])
def playground() -> tuple[str, int]:
    st = _state()
    ruleset: RuleSet = st.rules.get()
    folder = examples_dir(ruleset)
    examples = list_examples(folder, ruleset.rules_dir)
    name = request.values.get("example", "").strip().removesuffix(".json")
    jurisdiction = request.values.get("jurisdiction", "").strip().upper()
    result: RunResult | None = None
    status = 200
    error = ""
    if jurisdiction and jurisdiction not in JURISDICTIONS:
        error, status = (
            f"Unknown jurisdiction {jurisdiction!r}: choose one of {', '.join(JURISDICTIONS)}.",
            400,
        )
    elif name:
        example = examples.get(name)
        if example is None:
            abort(404, description=f"There is no example request named {name!r}.")
        result = run_example(example, ruleset, st.settings, jurisdiction or None)
    return render_template(
        "playground.html",
        examples=examples,
        folder_found=folder.is_dir(),
        selected=name,
        jurisdiction=jurisdiction,
        jurisdictions=JURISDICTIONS,
        site_jurisdiction=ruleset.jurisdiction,
        result=result,
        error=error,
    ), status
