"""Loads and compiles the rule set in ``rules/``; reports every problem at once with file and line.

A rule set is: terminology (``terminology/``), value sets (``valuesets/``), shared definitions,
panels and data needs (``common.yaml``), rule files (every other ``*.yaml`` at the top level) and
the site configuration (``site.yaml``). Compilation resolves ``$param`` references, value set ids,
observation kinds and templates once, so evaluation does no parsing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from ..reading.dosage import timing_codes
from ..reading.terminology import Terminology
from ..validation import schema_validator
from .predicates import CompileContext, CompileError, Evaluator, Node, compile_node
from .template_python import card_template
from .templating import Fixed, fixed_text
from .yamlio import YamlError, line_of, load_with_lines

SPECIAL_FILES = {"common.yaml", "site.yaml"}


class RuleLoadError(Exception):
    """An invalid rule set; ``problems`` lists every error as ``file:line: [rule id] message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the rule set:\n" + "\n".join(problems))
        self.problems = problems


@dataclass
class Rule:
    id: str
    title: str
    file: str
    line: int
    source: dict[str, Any]
    hooks: tuple[str, ...]
    jurisdictions: tuple[str, ...]
    params: dict[str, Any]
    when: Node
    indicator: str
    kind: str = "card"
    on_unknown: str = "ask"
    panel: str | None = None
    decision: str | None = None
    indicator_by_jurisdiction: dict[str, str] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    templates: dict[str, jinja2.Template] = field(default_factory=dict)
    row: dict[str, jinja2.Template] = field(default_factory=dict)
    #: texts rendered once at load ("summary", "detail", "row:<key>"): see templating.fixed_text
    fixed: dict[str, Fixed] = field(default_factory=dict)
    evaluate_last: bool = False
    reassuring: bool = False
    quiet_when_critical: bool = False
    enabled: bool = True
    description: str = ""
    also_cites: list[dict[str, Any]] = field(default_factory=list)
    needs: set[str] = field(default_factory=set)
    file_order: int = 100

    def applies(self, hook: str, jurisdiction: str) -> bool:
        return (
            self.enabled
            and hook in self.hooks
            and ("all" in self.jurisdictions or jurisdiction in self.jurisdictions)
        )

    def indicator_for(self, jurisdiction: str) -> str:
        return self.indicator_by_jurisdiction.get(jurisdiction, self.indicator)


@dataclass
class Panel:
    id: str
    title: str
    summary: jinja2.Template
    detail: jinja2.Template
    source: dict[str, Any]
    links: list[dict[str, Any]]
    lead: tuple[str, ...] = ()


@dataclass
class RuleSet:
    rules: list[Rule]
    definitions: dict[str, Node]
    panels: dict[str, Panel]
    override_reasons: dict[str, str]
    default_override_reasons: list[str]
    data_needs: dict[str, dict[str, Any]]
    terminology: Terminology
    observation_kinds: dict[str, dict[str, Any]]
    jurisdiction: str
    rules_dir: Path
    fingerprint: str  # content SHA-256, see fingerprint()
    #: the definitions' compiled evaluators (what ``ref`` calls)
    evaluators: dict[str, Evaluator] = field(init=False, repr=False, compare=False)
    #: per (hook, jurisdiction): which rules apply, with their evaluators (engine/evaluate.py)
    plans: dict[tuple[str, str], tuple[Any, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    #: rule id → (its file's ``order``, its place): how cards of one severity are ordered
    rule_order: dict[str, tuple[int, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.evaluators = {name: node.evaluator() for name, node in self.definitions.items()}
        self.rule_order = {r.id: (r.file_order, i) for i, r in enumerate(self.rules)}

    @property
    def version(self) -> str:
        """The short form of the fingerprint shown on pages, cards and log lines."""
        return self.fingerprint[:12]

    def rule(self, rule_id: str) -> Rule:
        return next(r for r in self.rules if r.id == rule_id)


def _fingerprinted_files(rules_dir: Path, site_path: Path) -> list[tuple[str, Path]]:
    """(normalised name, path) of every file the rule set is read from, sorted by name.

    Rule tests are not part of the served rule set. The site configuration is named ``site.yaml``
    wherever it lives, so the same site file gives the same fingerprint from any folder.
    """
    named: dict[str, Path] = {}
    for p in rules_dir.rglob("*.yaml"):
        rel = p.relative_to(rules_dir)
        if rel.parts[0] != "tests" and rel.as_posix() != "site.yaml" and p.is_file():
            named[rel.as_posix()] = p
    if site_path.is_file():
        named["site.yaml"] = site_path
    return sorted(named.items())


def stat_signature(rules_dir: Path, site_path: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detector (names, sizes, modification times): when it is unchanged, so is
    the content fingerprint, which is only recomputed when this changes."""
    out = []
    for name, p in _fingerprinted_files(rules_dir, site_path):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


_FINGERPRINTS: dict[tuple[str, str], tuple[tuple[tuple[str, int, int], ...], str]] = {}


def fingerprint(rules_dir: Path, site_path: Path) -> str:
    """SHA-256 of the rule set's content: every file's normalised relative path and bytes, sorted.

    Identical for identical rules in any folder, on any platform (CRLF is read as LF, as YAML
    does) and after ``touch``; it changes when any file's content, name or presence changes.
    """
    rules_dir, site_path = Path(rules_dir), Path(site_path)
    key = (str(rules_dir), str(site_path))
    signature = stat_signature(rules_dir, site_path)
    cached = _FINGERPRINTS.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    h = hashlib.sha256()
    for name, p in _fingerprinted_files(rules_dir, site_path):
        try:
            content = p.read_bytes().replace(b"\r\n", b"\n")
        except FileNotFoundError:
            continue
        encoded = name.encode()
        h.update(b"%d:%s:%d:" % (len(encoded), encoded, len(content)))
        h.update(content)
    digest = h.hexdigest()
    if len(_FINGERPRINTS) > 64:
        _FINGERPRINTS.clear()
    _FINGERPRINTS[key] = (signature, digest)
    return digest


class _Problems:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.items: list[str] = []

    def add(self, file: Path, line: int, message: str, rule_id: str | None = None) -> None:
        try:
            name = file.relative_to(self.base.parent)
        except ValueError:
            name = file
        tag = f" [rule {rule_id}]" if rule_id else ""
        self.items.append(f"{name}:{line}:{tag} {message}")


def _load(path: Path, schema: str, problems: _Problems) -> tuple[Any, dict[Any, int]] | None:
    try:
        data, lines = load_with_lines(path)
    except YamlError as exc:
        problems.add(path, exc.line, f"YAML syntax: {exc.message}")
        return None
    except OSError as exc:
        problems.add(path, 1, f"cannot read: {exc}")
        return None
    validator = schema_validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    for err in errors:
        rule_id = None
        p = tuple(err.absolute_path)
        if len(p) >= 2 and p[0] == "rules" and isinstance(data, dict):
            try:
                rule_id = data["rules"][p[1]].get("id")
            except (IndexError, KeyError, AttributeError, TypeError):
                rule_id = None
        where = ".".join(str(x) for x in p[2:]) if rule_id else ".".join(str(x) for x in p)
        problems.add(path, line_of(lines, p), f"{where + ': ' if where else ''}{err.message[:300]}", rule_id)
    return (data, lines) if not errors else None


_CACHE: dict[tuple[str, str, str], RuleSet] = {}


def load_ruleset(rules_dir: Path, site_path: Path | None = None) -> RuleSet:
    """Load, validate and compile every file; raise :class:`RuleLoadError` listing all problems.

    A rule set is read-only once compiled, so an unchanged set of files is compiled once per
    process (app factories in tests, the CLI and hot reload all share it).
    """
    rules_dir = Path(rules_dir).resolve()
    site_path = Path(site_path).resolve() if site_path else rules_dir / "site.yaml"
    fp = fingerprint(rules_dir, site_path)
    key = (str(rules_dir), str(site_path), fp)
    if key not in _CACHE:
        while len(_CACHE) >= 8:  # a few (site variants in rule tests); old versions drop out
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _load_ruleset(rules_dir, site_path, fp)
    return _CACHE[key]


def _with_site_codes(
    kinds: dict[str, dict[str, Any]],
    site: dict[str, Any],
    lines: dict[Any, int],
    site_path: Path,
    problems: _Problems,
) -> dict[str, dict[str, Any]]:
    """The observation kinds plus the site's own codes (``observation_codes`` in site.yaml).

    A code mapped to an unknown kind, or already the code of another kind, is a load error.
    """
    mapping = site.get("observation_codes") or {}
    if not mapping:
        return kinds
    out = {k: {**v, "codes": list(v.get("codes") or [])} for k, v in kinds.items()}
    owner = {(c["system"], str(c["code"])): k for k, v in kinds.items() for c in v.get("codes") or []}
    for kind, codes in mapping.items():
        if kind not in out:
            problems.add(
                site_path,
                line_of(lines, ("observation_codes", kind)),
                f"observation_codes maps codes to unknown observation kind {kind!r}; "
                f"known: {', '.join(sorted(out))}",
            )
            continue
        for i, c in enumerate(codes or []):
            key = (c["system"], str(c["code"]))
            if key in owner and owner[key] != kind:
                problems.add(
                    site_path,
                    line_of(lines, ("observation_codes", kind, i)),
                    f"code {key[0]}|{key[1]} is already a code of observation kind {owner[key]!r}",
                )
                continue
            owner[key] = kind
            out[kind]["codes"].append(
                {"system": key[0], "code": key[1], "status": "local", "source": f"site: {site_path.name}"}
                | ({"display": c["display"]} if c.get("display") else {})
            )
    return out


def _load_ruleset(rules_dir: Path, site_path: Path, fp: str) -> RuleSet:
    problems = _Problems(rules_dir)
    if not rules_dir.is_dir():
        raise RuleLoadError([f"{rules_dir}: rules directory not found"])

    # terminology and value sets
    meds_path = rules_dir / "terminology" / "medications.yaml"
    obs_path = rules_dir / "terminology" / "observations.yaml"
    meds = _load(meds_path, "terminology", problems)
    obs = _load(obs_path, "observations", problems)
    timing_path = rules_dir / "terminology" / "timing.yaml"  # optional: without it no code is read
    timing = _load(timing_path, "timing", problems) if timing_path.exists() else None
    valuesets: list[dict[str, Any]] = []
    vs_ids: dict[str, str] = {}
    for path in sorted((rules_dir / "valuesets").glob("*.yaml")):
        loaded = _load(path, "valueset", problems)
        if loaded is None:
            continue
        data, lines = loaded
        if data["id"] in vs_ids:
            problems.add(path, line_of(lines, ("id",)), f"duplicate value set id {data['id']!r}")
        if data["id"] != path.stem:
            problems.add(
                path, line_of(lines, ("id",)), f"value set id {data['id']!r} differs from the file name"
            )
        vs_ids[data["id"]] = data.get("kind", "condition")
        valuesets.append(data)
        if meds is not None:
            known = set(meds[0].get("ingredients") or {})
            for i, ing in enumerate(data.get("ingredients") or []):
                if ing not in known:
                    problems.add(path, line_of(lines, ("ingredients", i)), f"unknown ingredient {ing!r}")
            known_products = set(str(k) for k in (meds[0].get("products") or {}))
            for i, code in enumerate(data.get("products") or []):
                if str(code) not in known_products:
                    problems.add(
                        path,
                        line_of(lines, ("products", i)),
                        f"product {code!r} is not in terminology/medications.yaml",
                    )
    terminology = Terminology.build(meds[0] if meds else {}, valuesets)
    terminology.timing = timing_codes(timing[0]) if timing else {}
    observation_kinds: dict[str, dict[str, Any]] = (obs[0].get("observations") if obs else None) or {}

    # site configuration
    site: dict[str, Any] = {}
    site_lines: dict[Any, int] = {}
    if site_path.exists():
        loaded = _load(site_path, "site", problems)
        if loaded is not None:
            site, site_lines = loaded
            site = site or {}
    jurisdiction = site.get("jurisdiction", "US")
    site_rules: dict[str, dict[str, Any]] = site.get("rules") or {}
    observation_kinds = _with_site_codes(observation_kinds, site, site_lines, site_path, problems)

    # common definitions, panels, data needs
    common = _load(rules_dir / "common.yaml", "common", problems)
    common_data, common_lines = common if common else ({}, {})
    ref_names = set((common_data.get("definitions") or {}).keys())
    shared_params = dict(common_data.get("params") or {})
    for key, value in (site.get("params") or {}).items():
        if key not in shared_params:
            problems.add(site_path, line_of(site_lines, ("params", key)), f"unknown shared parameter {key!r}")
        shared_params[key] = value
    definitions: dict[str, Node] = {}
    for name, spec in (common_data.get("definitions") or {}).items():
        ctx = CompileContext(dict(shared_params), vs_ids, set(observation_kinds), ref_names)
        try:
            definitions[name] = compile_node(spec, ctx)
        except CompileError as exc:
            p = ("definitions", name, *exc.path)
            problems.add(
                rules_dir / "common.yaml", line_of(common_lines, p), f"definition {name}: {exc.message}"
            )
    panels: dict[str, Panel] = {}
    for pid, spec in (common_data.get("panels") or {}).items():
        try:
            panels[pid] = Panel(
                pid,
                spec["title"],
                card_template(spec["summary"]),
                card_template(spec["detail"]),
                spec["source"],
                spec.get("links") or [],
                tuple(spec.get("lead") or ()),
            )
        except jinja2.TemplateSyntaxError as exc:
            problems.add(
                rules_dir / "common.yaml",
                line_of(common_lines, ("panels", pid)),
                f"panel {pid}: template: {exc.message}",
            )
    override_reasons = common_data.get("override_reasons") or {}
    default_reasons = common_data.get("default_override_reasons") or list(override_reasons)
    for code in default_reasons:
        if code not in override_reasons:
            problems.add(
                rules_dir / "common.yaml",
                line_of(common_lines, ("default_override_reasons",)),
                f"unknown override reason {code!r}",
            )

    # rule files
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    rule_files = sorted(p for p in rules_dir.glob("*.yaml") if p.name not in SPECIAL_FILES)
    for path in rule_files:
        loaded = _load(path, "rules", problems)
        if loaded is None:
            continue
        data, lines = loaded
        for i, spec in enumerate(data["rules"]):
            rule = _compile_rule(
                spec,
                path,
                lines,
                ("rules", i),
                site_rules.get(spec["id"], {}),
                shared_params,
                vs_ids,
                observation_kinds,
                ref_names,
                panels,
                override_reasons,
                problems,
            )
            if rule is None:
                continue
            rule.file_order = int(data.get("order", 100))
            if rule.id in seen:
                problems.add(path, rule.line, f"duplicate rule id (also in {seen[rule.id]})", rule.id)
                continue
            seen[rule.id] = f"{path.name}:{rule.line}"
            rules.append(rule)
    for rid in site_rules:
        if rid not in seen:
            problems.add(
                site_path, line_of(site_lines, ("rules", rid)), f"site.yaml overrides unknown rule {rid!r}"
            )
    for pid, panel in panels.items() if rules else ():  # (no rules at all is said below)
        for rid in panel.lead:
            if rid not in seen:
                problems.add(
                    rules_dir / "common.yaml",
                    line_of(common_lines, ("panels", pid, "lead")),
                    f"panel {pid}: lead {rid!r} is not a rule",
                )
    if not rules and not problems.items:
        problems.add(rules_dir / "*.yaml", 0, "no rules: an empty rule set would never warn anyone")
    if problems.items:
        raise RuleLoadError(problems.items)
    rules.sort(key=lambda r: r.evaluate_last)  # stable: file order otherwise
    return RuleSet(
        rules,
        definitions,
        panels,
        override_reasons,
        default_reasons,
        common_data.get("data_needs") or {},
        terminology,
        observation_kinds,
        jurisdiction,
        rules_dir,
        fp,
    )


def _compile_rule(
    spec: dict[str, Any],
    path: Path,
    lines: dict[Any, int],
    base: tuple[Any, ...],
    override: dict[str, Any],
    shared_params: dict[str, Any],
    vs_ids: dict[str, str],
    observation_kinds: dict[str, dict[str, Any]],
    ref_names: set[str],
    panels: dict[str, Panel],
    override_reasons: dict[str, str],
    problems: _Problems,
) -> Rule | None:
    rid = spec["id"]
    start = len(problems.items)
    params = dict(spec.get("params") or {})
    for key, value in (override.get("params") or {}).items():
        if key not in params:
            problems.add(
                path, line_of(lines, (*base, "params")), f"site.yaml sets unknown parameter {key!r}", rid
            )
        params[key] = value
    ctx = CompileContext({**shared_params, **params}, vs_ids, set(observation_kinds), ref_names)
    when: Node | None = None
    try:
        when = compile_node(spec["when"], ctx)
    except CompileError as exc:
        problems.add(path, line_of(lines, (*base, "when", *exc.path)), f"when: {exc.message}", rid)
    unused = set(spec.get("params") or {}) - ctx.used_params - set(override.get("params") or {})
    kind = spec.get("kind", "card")
    if kind == "row" and spec.get("panel") not in panels:
        problems.add(path, line_of(lines, (*base, "panel")), f"unknown panel {spec.get('panel')!r}", rid)
    templates: dict[str, jinja2.Template] = {}
    row: dict[str, jinja2.Template] = {}
    card = spec.get("card") or {}
    for key in ("summary", "detail"):
        if key in card:
            try:
                templates[key] = card_template(card[key])
            except jinja2.TemplateSyntaxError as exc:
                problems.add(
                    path,
                    line_of(lines, (*base, "card", key)) + exc.lineno - 1,
                    f"card.{key}: template: {exc.message}",
                    rid,
                )
    for key, text in (spec.get("row") or {}).items():
        try:
            row[key] = card_template(text)
        except jinja2.TemplateSyntaxError as exc:
            problems.add(
                path, line_of(lines, (*base, "row", key)), f"row.{key}: template: {exc.message}", rid
            )
    for code in card.get("override_reasons") or []:
        if code not in override_reasons:
            problems.add(
                path,
                line_of(lines, (*base, "card", "override_reasons")),
                f"unknown override reason {code!r}",
                rid,
            )
    for key in unused:
        # A parameter a template uses is fine; one nothing uses is probably a typo.
        if not any(key in (card.get(k) or "") for k in ("summary", "detail")) and not any(
            key in t for t in (spec.get("row") or {}).values()
        ):
            problems.add(path, line_of(lines, (*base, "params", key)), f"parameter {key!r} is not used", rid)
    if len(problems.items) > start or when is None:
        return None
    rule_params = {**shared_params, **params}
    values = {"params": rule_params, "rule": {"id": rid, "title": spec["title"]}}
    fixed = {}
    for key, template in templates.items():
        fixed[key] = fixed_text(card[key], template, values)
    for key, template in row.items():
        fixed[f"row:{key}"] = fixed_text(spec["row"][key], template, values)
    return Rule(
        id=rid,
        title=spec["title"],
        file=path.name,
        line=line_of(lines, base),
        source=spec["source"],
        hooks=tuple(spec["hooks"]),
        jurisdictions=tuple(spec.get("jurisdictions") or ["all"]),
        params=rule_params,
        when=when,
        indicator=spec["indicator"],
        kind=kind,
        on_unknown=spec.get("on_unknown", "ask"),
        panel=spec.get("panel"),
        decision=spec.get("decision"),
        indicator_by_jurisdiction=spec.get("indicator_by_jurisdiction") or {},
        card=card,
        templates=templates,
        row=row,
        fixed={k: v for k, v in fixed.items() if v is not None},
        evaluate_last=bool(spec.get("evaluate_last")),
        reassuring=bool(spec.get("reassuring")),
        quiet_when_critical=bool(spec.get("quiet_when_critical")),
        enabled=bool(override.get("enabled", spec.get("enabled", True))),
        description=spec.get("description", ""),
        also_cites=spec.get("also_cites") or [],
        needs=when.needs(),
    )
