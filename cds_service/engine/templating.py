"""The Jinja environment card templates are compiled in, and rendering without its overheads.

Templates run sandboxed (rule files are content, not code). Two things the sandbox costs per
attribute and per render are done more directly here, with the same results:

* ``x.name`` on a plain dict (what every bound fact is): a dict has no attribute ``name``, so
  the sandbox's ``getattr`` would fail, then fall back to ``x['name']``; here the item is read
  first when the name is not one of dict's own attributes (``x.items`` stays the method);
* filters are called without their async dispatcher (below);
* :func:`render` builds the template's context directly from a context the caller made for
  this render (no copy, no merge with the globals, which the caller includes).

A template that reads only its rule's own values (``params``, ``rule``) is rendered once, when
the rule set is compiled (:func:`fixed_text`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import Namespace

_DICT_ATTRIBUTES = frozenset(dir(dict))


def _escape_markdown(value: Any) -> Any:
    """Text from the record must not inject HTML or break a Markdown table."""
    if isinstance(value, str):
        if "<" in value or ">" in value or "|" in value:
            return value.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        return value
    return "" if value is None else value


class CardTemplates(SandboxedEnvironment):
    """The sandbox, with the answers its checks give for the objects card templates use most
    given directly (each branch returns what :class:`SandboxedEnvironment` would)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        t = type(obj)
        if t is dict:
            if attribute not in _DICT_ATTRIBUTES:
                try:
                    return obj[attribute]
                except KeyError:
                    return self.undefined(obj=obj, name=attribute)
            if not attribute.startswith("_"):  # dict's methods: safe, and never str.format
                return getattr(obj, attribute)
        elif (t is LoopContext or t is Namespace) and not attribute.startswith("_"):
            # loop.last, loop.index, ns.n …: public attributes of a loop or a namespace are safe
            # and never str.format (one that is not there: the sandbox's answer, below)
            try:
                return getattr(obj, attribute)
            except AttributeError:
                pass
        return super().getattr(obj, attribute)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if __obj is Namespace:  # namespace(...): a safe callable that takes no context
            kwargs.pop("_block_vars", None)
            kwargs.pop("_loop_vars", None)
            return Namespace(*args, **kwargs)
        return super().call(__context, __obj, *args, **kwargs)


class CardTemplate(jinja2.Template):
    """A card template; ``python``: its translation to a Python function of the render's context
    (:mod:`.template_python`), None when Jinja renders it."""

    python: Callable[[dict[str, Any]], str] | None = None


#: The environment's settings (tests compare the card environment with a plain sandbox of these).
OPTIONS: dict[str, Any] = {
    "undefined": jinja2.StrictUndefined,
    "autoescape": False,
    "trim_blocks": True,
    "lstrip_blocks": True,
    "keep_trailing_newline": False,
    "finalize": _escape_markdown,
}
TEMPLATES = CardTemplates(**OPTIONS)
TEMPLATES.template_class = CardTemplate


# Filters with an async variant (map, join, list, unique, selectattr …) are registered wrapped in
# a dispatcher that asks, per call, whether the environment is async; this one never is, so each
# is registered as its synchronous function (the dispatcher's own answer, with the same context,
# environment or eval-context argument, which the compiled template passes by the function's mark).
for _name, _filter in list(TEMPLATES.filters.items()):
    if getattr(_filter, "jinja_async_variant", False) and hasattr(_filter, "__wrapped__"):
        TEMPLATES.filters[_name] = _filter.__wrapped__


def render(template: jinja2.Template, ctx: dict[str, Any]) -> str:
    """The template's text for ``ctx``: its Python translation's, unless that stops (at an
    undefined value or an error: Jinja then gives the text, or raises the error, itself)."""
    python = getattr(template, "python", None)
    if python is not None:
        try:
            return python(ctx)
        except Exception:  # noqa: BLE001, S110 - Jinja renders it below, with Jinja's own error
            pass
    return render_jinja(template, ctx)


def render_jinja(template: jinja2.Template, ctx: dict[str, Any]) -> str:
    """``template.render(ctx)`` without its two copies of the context (``render`` copies it,
    then merges it into the globals): ``ctx`` is built for this render and carries the globals
    itself. A template's own ``{% set %}`` writes to the Jinja context's locals, never into
    ``ctx``. (The context's ``globals_keys`` only serve ``{% import %}``, which needs a loader
    this environment does not have.)"""
    context = Context(TEMPLATES, ctx, template.name, template.blocks)
    return "".join(template.root_render_func(context))


#: Globals whose use does not make a text vary (``lipsum`` is random, so it does).
_STEADY_GLOBALS = frozenset({"range", "dict", "namespace", "cycler", "joiner"})


@dataclass(frozen=True, slots=True)
class Fixed:
    """A template's text rendered once: it reads nothing but ``names`` (the rule's own values),
    so it is the same for every patient unless a binding of the same name shadows one."""

    text: str
    names: frozenset[str]


def fixed_text(source: str, template: jinja2.Template, values: dict[str, Any]) -> Fixed | None:
    """The template's stripped text when it reads only ``values`` (and steady globals) and
    renders without error; None otherwise (it is then rendered per card)."""
    try:
        ast = TEMPLATES.parse(source)
    except jinja2.TemplateSyntaxError:
        return None
    # what it reads from its context: names it does not set itself, and the globals it uses
    # (which find_undeclared_variables leaves out, but a binding of the same name would shadow)
    used_globals = {n.name for n in ast.find_all(nodes.Name) if n.name in TEMPLATES.globals}
    names = frozenset(meta.find_undeclared_variables(ast) | used_globals)
    if not names <= set(values) | _STEADY_GLOBALS:
        return None
    if any(f.name == "random" for f in ast.find_all(nodes.Filter)):
        return None
    try:
        text = render(template, {**TEMPLATES.globals, **values}).strip()
    except Exception:  # noqa: BLE001 - it fails per card as it did, and is logged there
        return None
    return Fixed(text, names)
