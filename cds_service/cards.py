"""Turns an evaluation into CDS Hooks 2.0.1 cards: the fewest cards that carry the decision.

One card per decision (rules sharing a ``decision`` key collapse to the most severe), panel rows
gathered into one card per panel (the eligibility picture across frameworks, the data gaps),
ordered critical → warning → info, then by rule order. Optional fields that are empty are omitted.
Every card names its rule in ``source.topic`` and carries the facts and FHIR references that fired
it in ``extension``.
"""

from __future__ import annotations

import logging
from typing import Any

import jinja2

from .engine.evaluate import Evaluation, Outcome
from .engine.loader import Panel, Rule
from .engine.predicates.core import Missing
from .engine.templating import TEMPLATES, render
from .ids import uuid4

log = logging.getLogger(__name__)

TOPIC_SYSTEM = "https://ketamine-cds.github.io/rules"
OVERRIDE_SYSTEM = "https://ketamine-cds.github.io/override-reasons"
EXPLANATION = "ketamine-cds.explanation"
SEVERITY = {"critical": 0, "warning": 1, "info": 2}
DATA_GAPS = "data-gaps"


def render_cards(ev: Evaluation, patient_id: str | None) -> list[dict[str, Any]]:
    rs = ev.ruleset
    base_ctx = _base_context(ev)
    memo: Memo = {}  # bound facts shared by several rules (the TRD picture, the order) converted once
    # Within one indicator: the file's `order` (TRD before frameworks before …), then rule order.
    order = rs.rule_order
    entries: list[tuple[int, tuple[int, int], dict[str, Any]]] = []

    fired = ev.fired
    # With a contraindication on screen, nothing else may reassure: cards that say "within the
    # label" or "in the studied range" are left out, and templates see `critical` to qualify.
    critical = [o for o in fired if (o.indicator or o.rule.indicator) == "critical" and o.rule.kind == "card"]
    base_ctx["critical"] = [o.rule.title for o in critical]
    if critical:
        fired = [o for o in fired if not (o.rule.reassuring or o.rule.quiet_when_critical)]
    rows: dict[str, list[Outcome]] = {}
    for o in fired:
        if o.rule.kind == "row" and o.rule.panel:
            rows.setdefault(o.rule.panel, []).append(o)
    # A lead rule opens its panel's card instead of standing alone (one card for one decision).
    leads = {rid: pid for pid in rows for rid in rs.panels[pid].lead}

    # 1. own cards, one per decision
    by_decision: dict[str, list[Outcome]] = {}
    lead_outcomes: dict[str, list[Outcome]] = {}
    for o in fired:
        if o.rule.kind != "card":
            continue
        if o.rule.id in leads and (o.indicator or o.rule.indicator) == "info":
            lead_outcomes.setdefault(leads[o.rule.id], []).append(o)
            continue
        by_decision.setdefault(o.rule.decision or o.rule.id, []).append(o)
    for outcomes in by_decision.values():
        outcomes.sort(key=lambda o: (SEVERITY[o.indicator or "info"], order[o.rule.id]))
        winner, others = outcomes[0], outcomes[1:]
        if (winner.indicator or "info") != "info":  # a finding is not followed by "in the studied range"
            others = [x for x in others if not x.rule.reassuring]
        card = _rule_card(winner, others, base_ctx, ev, patient_id, memo)
        entries.append((SEVERITY[card["indicator"]], order[winner.rule.id], card))

    # 2. panels from rows (opened by their lead rule's card text, if it fired)
    for panel_id, outcomes in rows.items():
        panel = rs.panels[panel_id]
        view = [_row_view(o, base_ctx) for o in outcomes]
        indicator = min((o.indicator or "info" for o in outcomes), key=SEVERITY.__getitem__)
        ctx: dict[str, Any] = {**base_ctx, "rows": view, "lead": None}
        led = lead_outcomes.get(panel_id, [])
        for lo in led:
            lctx = _rule_context(lo, base_ctx)
            ctx.update(lo.result.bind if lo.result else {})
            ctx["lead"] = {
                "summary": summary_text(_rule_text(lo, "summary", lctx), lo.rule.title),
                "detail": _with_citation(_rule_text(lo, "detail", lctx), lo.rule),
            }
        card = _panel_card(panel, indicator, ctx, [*led, *outcomes], patient_id, ev, memo)
        entries.append((SEVERITY[indicator], min(order[o.rule.id] for o in [*led, *outcomes]), card))

    # 3. data gaps: every rule that could not decide, grouped by what it lacks
    gaps = ev.unknown
    if gaps and DATA_GAPS in rs.panels:
        items = _gap_items(gaps, rs.data_needs)
        view = [{**i, "needed_by": ", ".join(i["needed_by"])} for i in items]
        panel = rs.panels[DATA_GAPS]
        card = _panel_card(
            panel,
            "warning" if _safety_gap(gaps) else "info",
            {**base_ctx, "rows": view},
            gaps,
            patient_id,
            ev,
            memo,
        )
        # the action, not the row: "Order: body weight (last 30 days)" whether missing or unreadable
        suggestions = [
            _suggestion(f"Order: {i['need']}", i["order"], patient_id, recommended=True)
            for i in items
            if i.get("order")
        ]
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "any"
        entries.append((SEVERITY[card["indicator"]], (10_000, 0), card))

    entries.sort(key=lambda e: (e[0], e[1]))
    return [c for _, _, c in entries]


def _gap_items(gaps: list[Outcome], data_needs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The data-gap rows: one per need (its label), whichever kinds and rules ask for it. A need
    recorded but not usable is said so ("a readable pregnancy status — the latest could not be
    read"), never beside a second row saying it is missing (the hCG test another kind asks for is
    the same need)."""
    items: dict[str, dict[str, Any]] = {}
    for o in gaps:
        for m in o.result.missing if o.result else []:
            need = data_needs.get(m.id, {})
            base = m.label if m.specific else need_label(need, m)
            item = items.get(base)
            if item is None:
                item = items[base] = {
                    "id": m.id,
                    "need": base,
                    "label": base,
                    "needed_by": [],
                    "order": need.get("order"),
                    "whys": [],
                }
            if m.why and (m.quality, m.why) not in item["whys"]:  # recorded, but not usable: said so
                item["whys"].append((m.quality, m.why))
            if o.rule.title not in item["needed_by"]:
                item["needed_by"].append(o.rule.title)
    out = []
    for item in items.values():
        whys = item.pop("whys")
        if whys:
            item["label"] = f"a {whys[0][0]} {item['need']} — {'; '.join(dict.fromkeys(w for _, w in whys))}"
        out.append(item)
    return out


def need_label(need: dict[str, Any], m: Missing) -> str:
    """The data_needs label, its ``{window}`` filled with the window the rule asked for (as the
    site configured it); without a window, the words around it go too ("…, last {window})")."""
    label: str = need.get("label", m.label)
    if "{window}" not in label:
        return label
    if m.window:
        return label.replace("{window}", m.window)
    for words in (", last {window}", " (last {window})", "{window}"):
        label = label.replace(words, "")
    return label


def _safety_gap(gaps: list[Outcome]) -> bool:
    """A gap blocks a safety check (a rule that would warn or stop) rather than an info rule."""
    return any(o.rule.indicator in ("warning", "critical") for o in gaps)


def _base_context(ev: Evaluation) -> dict[str, Any]:
    f = ev.facts
    return {
        **TEMPLATES.globals,  # range, dict, namespace …: what Template.render would merge in
        "jurisdiction": ev.jurisdiction,
        "hook": f.hook,
        "today": f.today.isoformat(),
        "patient": {"age": f.age, "sex": f.sex}
        if f.record.patient is not None
        else {"age": None, "sex": None},
    }


def _render(template: jinja2.Template | None, ctx: dict[str, Any], rule_id: str) -> str:
    """The template's text for this card's context (:func:`~.engine.templating.render`);
    a template error is logged and gives no text."""
    if template is None:
        return ""
    try:
        return render(template, ctx).strip()
    except jinja2.TemplateError as exc:  # a rule test catches these; never fail the request
        log.error("template error in rule %s: %s", rule_id, exc)
        return ""


def _rule_text(o: Outcome, key: str, ctx: dict[str, Any], group: str = "") -> str:
    """The text of one of the rule's templates (``summary``, ``detail``; ``group="row:"`` for a
    row's): rendered for this card, or the rule's fixed text when the template reads only the
    rule's own values (:func:`~.engine.templating.fixed_text`) that no binding shadows."""
    fixed = _fixed_text(o, group + key)
    if fixed is not None:
        return fixed
    rule = o.rule
    templates = rule.row if group else rule.templates
    return _render(templates.get(key), ctx, rule.id)


def _fixed_text(o: Outcome, key: str) -> str | None:
    """The rule's fixed text for ``key`` when no binding shadows a name it reads, else None."""
    fixed = o.rule.fixed.get(key)
    if fixed is None:
        return None
    if fixed.names:  # (most read nothing at all: no binding can shadow them)
        bind = o.result.bind if o.result else None
        if bind and fixed.names & bind.keys():
            return None
    return fixed.text


#: a rule's fixed text → the same with its whitespace runs as one space (a rule's texts are
#: read-only once loaded; bounded: reloads make new texts)
_SQUEEZED: dict[str, str] = {}


def _squeezed(text: str) -> str:
    hit = _SQUEEZED.get(text)
    if hit is None:
        if len(_SQUEEZED) >= 4096:
            _SQUEEZED.clear()
        hit = _SQUEEZED[text] = " ".join(text.split())
    return hit


def summary_text(text: str, fallback: str) -> str:
    text = " ".join(text.split()) or fallback  # whitespace runs as one space (str.split's = re's \s)
    return text if len(text) < 140 else _shorten(text, 138) + "…"


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters after its last whole list item (a ``,``/``;``
    outside brackets), else after its last whole word, so a card never shows "baselin…"."""
    if text[limit] in ",;":  # the cut falls exactly at an item's end
        return text[:limit]
    head, depth, item_end, word_end = text[: limit + 1], 0, 0, 0
    for i, ch in enumerate(head):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif ch == " " and i:
            word_end = i
            if depth == 0 and head[i - 1] in ",;":
                item_end = i - 1
    if item_end > limit // 2:
        return text[:item_end]
    if word_end > limit // 2:
        return text[:word_end].rstrip(",;:")
    return text[:limit].rstrip()


def _rule_context(o: Outcome, base: dict[str, Any]) -> dict[str, Any]:
    bind = o.result.bind if o.result else {}
    if type(bind) is not dict:  # a shared constant's read-only mapping: templates see a dict
        bind = dict(bind)
    return {
        **base,
        **bind,
        "bound": bind,  # every binding by name, for templates that loop over several
        "params": o.rule.params,
        "rule": {"id": o.rule.id, "title": o.rule.title},
    }


def _rule_card(
    o: Outcome,
    others: list[Outcome],
    base: dict[str, Any],
    ev: Evaluation,
    patient_id: str | None,
    memo: Memo | None = None,
) -> dict[str, Any]:
    rule = o.rule
    ctx = _rule_context(o, base)
    indicator = o.indicator or rule.indicator
    card: dict[str, Any] = {
        "uuid": uuid4(),
        "summary": summary_text(_rule_text(o, "summary", ctx), rule.title),
        "indicator": indicator,
        "source": _source(rule),
    }
    detail = _with_citation(_rule_text(o, "detail", ctx), rule)
    if others:
        also = []
        for x in others:
            xctx = _rule_context(x, base)
            text = summary_text(_rule_text(x, "summary", xctx), "")
            also.append(f"- {text or x.rule.title} ({x.indicator})")
            if indicator == "info":  # information folded into one card keeps its detail
                more = _rule_text(x, "detail", xctx)
                also += [f"  {line}" if line.strip() else "" for line in more.splitlines()]
        detail += "\n\n**Also found:**\n" + "\n".join(also)
    card["detail"] = detail
    suggestions = [
        _suggestion(s["label"], _suggestion_code(s, ev), patient_id, recommended=s.get("recommended", False))
        for s in rule.card.get("suggestions") or []
    ]
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "any"
    if indicator in ("warning", "critical"):
        card["overrideReasons"] = _override_reasons(rule.card.get("override_reasons"), ev)
    links = [
        {"label": lk["label"], "url": lk["url"], "type": "absolute"}
        for x in [o, *others]
        for lk in x.rule.card.get("links") or []
    ]
    if links:
        card["links"] = links
    card["extension"] = {EXPLANATION: _explanation([o, *others], memo)}
    return card


# What an evidence status means, in words a prescriber reads on the card.
EVIDENCE_WORDS = {
    "regulatory-label": "regulatory label",
    "guideline": "guideline",
    "guideline-level-1": "guideline, Level 1 evidence",
    "guideline-level-2": "guideline, Level 2 evidence",
    "guideline-level-3": "guideline, Level 3 evidence",
    "guideline-level-4": "guideline, Level 4 evidence",
    "expert-consensus": "expert consensus",
    "observational": "observational studies",
    "seed-only": "unverified: reported in a review article, not checked against its primary source",
    "unverified": "unverified: the source could not be traced",
    "local-policy": "local policy of this service",
}


def evidence_words(evidence: str, verified: bool = True) -> str:
    words = EVIDENCE_WORDS.get(evidence, evidence)
    if not verified and not words.startswith("unverified"):
        words = f"{words} (unverified)"
    return words


def _with_citation(detail: str, rule: Rule) -> str:
    cite = _citation(rule)
    return f"{detail}\n\n{cite}" if detail else cite


#: id of a rule → (the rule, kept so its id stays its own; its citation line): rules are read-only
#: once loaded, so each rule's line is built once per process (bounded: reloads make new rules)
_CITATIONS: dict[int, tuple[Rule, str]] = {}


def _citation(rule: Rule) -> str:
    hit = _CITATIONS.get(id(rule))
    if hit is not None and hit[0] is rule:
        return hit[1]
    if len(_CITATIONS) >= 4096:
        _CITATIONS.clear()
    cite = _citation_of(rule)
    _CITATIONS[id(rule)] = (rule, cite)
    return cite


def _citation_of(rule: Rule) -> str:
    src = rule.source
    parts = [src.get("guideline") or src["label"]]
    if src.get("section"):
        parts.append(src["section"])
    parts.append(str(src["year"]))
    evidence = evidence_words(src["evidence"], src.get("verified", True))
    cite = f"Source: [{', '.join(parts)}]({src['url']}) — evidence: {evidence}"
    for extra in rule.also_cites:
        cite += f"; [{extra['label']}]({extra['url']}) ({evidence_words(extra['evidence'])})"
    return cite


def _row_view(o: Outcome, base: dict[str, Any]) -> dict[str, Any]:
    ctx = _rule_context(o, base)
    view = {}
    for key, template in o.rule.row.items():
        fixed = _fixed_text(o, "row:" + key)
        if fixed is not None:  # the same words for every patient: split and joined once
            view[key] = _squeezed(fixed)
        else:
            view[key] = " ".join(_render(template, ctx, o.rule.id).split())
    src = o.rule.source
    view.update(
        rule=o.rule.id,
        indicator=o.indicator,
        source_label=src["label"],
        source_url=src["url"],
        evidence=evidence_words(src["evidence"], src.get("verified", True)),
        verified=src.get("verified", True),
    )
    return view


def _panel_card(
    panel: Panel,
    indicator: str,
    ctx: dict[str, Any],
    outcomes: list[Outcome],
    patient_id: str | None,
    ev: Evaluation,
    memo: Memo | None = None,
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "uuid": uuid4(),
        "summary": summary_text(_render(panel.summary, ctx, panel.id), panel.title),
        "indicator": indicator,
        "detail": _render(panel.detail, ctx, panel.id),
        "source": {
            "label": panel.source["label"],
            "topic": {"system": TOPIC_SYSTEM, "code": panel.id, "display": panel.title},
        },
    }
    if panel.source.get("url"):
        card["source"]["url"] = panel.source["url"]
    if not card["detail"]:
        del card["detail"]
    if indicator in ("warning", "critical"):
        card["overrideReasons"] = _override_reasons(None, ev)
    links = [{"label": lk["label"], "url": lk["url"], "type": "absolute"} for lk in panel.links]
    if links:
        card["links"] = links
    card["extension"] = {EXPLANATION: _explanation(outcomes, memo)}
    return card


def _source(rule: Rule) -> dict[str, Any]:
    return {
        "label": rule.source["label"],
        "url": rule.source["url"],
        "topic": {"system": TOPIC_SYSTEM, "code": rule.id, "display": rule.title},
    }


def _override_reasons(codes: list[str] | None, ev: Evaluation) -> list[dict[str, str]]:
    rs = ev.ruleset
    return [
        {"system": OVERRIDE_SYSTEM, "code": c, "display": rs.override_reasons[c]}
        for c in (codes or rs.default_override_reasons)
    ]


def _suggestion_code(spec: dict[str, Any], ev: Evaluation) -> dict[str, Any] | None:
    if spec.get("need"):
        return ev.ruleset.data_needs.get(spec["need"], {}).get("order")
    return spec.get("service_request")


def _suggestion(
    label: str, code: dict[str, Any] | None, patient_id: str | None, *, recommended: bool
) -> dict[str, Any]:
    suggestion: dict[str, Any] = {"label": label[:120], "uuid": uuid4()}
    if recommended:
        suggestion["isRecommended"] = True
    if code:
        concept: dict[str, Any] = {"text": code["text"]}
        if code.get("system") and code.get("code"):
            coding = {"system": code["system"], "code": code["code"]}
            if code.get("display"):
                coding["display"] = code["display"]
            concept["coding"] = [coding]
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "code": concept,
        }
        if patient_id:
            resource["subject"] = {"reference": f"Patient/{patient_id}"}
        suggestion["actions"] = [{"type": "create", "description": label[:200], "resource": resource}]
    return suggestion


def _explanation(outcomes: list[Outcome], memo: Memo | None = None) -> dict[str, Any]:
    """Why the card fired: each rule, its reason, the facts it bound and the FHIR references."""
    out = []
    for o in outcomes:
        entry: dict[str, Any] = {"rule": o.rule.id, "status": o.status, "reason": o.reason}
        if o.result is not None:
            if o.result.evidence:
                entry["evidence"] = list(dict.fromkeys(o.result.evidence))
            if o.result.bind:
                entry["facts"] = _jsonable(o.result.bind, memo)
            if o.result.missing:
                entry["missing"] = [m.label for m in o.result.missing]
        entry["evidence_status"] = o.rule.source["evidence"]
        out.append(entry)
    return {"rules": out}


_SCALARS = (str, int, float, bool)
#: id of a container already converted in this response → (the container, kept so that its id
#: stays its own while the cards are built; its JSON form)
Memo = dict[int, tuple[Any, Any]]


def _jsonable(value: Any, memo: Memo | None = None) -> Any:
    """The JSON form of a bound fact: dict keys as strings, tuples as lists, other objects as
    their text; a dict's None, ``[]`` and ``""`` values left out (an empty dict or tuple stays)."""
    t = type(value)
    if t in _SCALARS:  # exact types first: most values are (this runs for every bound fact)
        return value
    if memo is not None and (t is dict or t is list):
        hit = memo.get(id(value))
        if hit is not None:
            return hit[1]
    if t is dict:
        out: Any = _plain_dict_form(value, memo)
    elif isinstance(value, dict):
        out = _dict_form(value, memo)
    elif t is list or t is tuple or isinstance(value, (list, tuple)):  # a tuple of types: tested in C
        out = [v if type(v) in _SCALARS else _jsonable(v, memo) for v in value]
    elif isinstance(value, _SCALARS):
        return value
    else:
        return str(value)
    if memo is not None and (t is dict or t is list):
        memo[id(value)] = (value, out)
    return out


def _plain_dict_form(value: dict[Any, Any], memo: Memo | None) -> dict[str, Any]:
    """:func:`_dict_form` of a plain dict whose keys are all text (every view the predicates bind):
    a copy (one allocation, its table copied as is) whose left-out values are deleted and whose
    containers are replaced in place, so the order is the same. A key that is not text: the
    definition builds it."""
    out = value.copy()
    for k, v in value.items():
        if type(k) is not str:
            return _dict_form(value, memo)
        tv = type(v)
        if tv is str:
            if not v:
                del out[k]
        elif tv is int or tv is float or tv is bool:
            pass
        elif v is None:
            del out[k]
        elif tv is list:
            if v:
                out[k] = _jsonable(v, memo)
            else:
                del out[k]
        elif v != [] and v != "":
            out[k] = _jsonable(v, memo)
        else:
            del out[k]
    return out


def _dict_form(value: dict[Any, Any], memo: Memo | None) -> dict[str, Any]:
    """A dict's JSON form, key by key (the definition): None, ``[]`` and ``""`` left out, keys as text."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        tv = type(v)
        if tv is str:
            if not v:
                continue
        elif tv is int or tv is float or tv is bool:
            pass
        elif v is None:
            continue
        elif tv is list:
            if not v:
                continue
            v = _jsonable(v, memo)
        elif v != [] and v != "":
            v = _jsonable(v, memo)
        else:
            continue
        out[k if type(k) is str else str(k)] = v
    return out
