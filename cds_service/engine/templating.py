"""The Jinja environment card templates are compiled in, and rendering without its overheads.

Templates run sandboxed (rule files are content, not code). Two things the sandbox costs per
attribute and per render are done more directly here, with the same results:

* ``x.name`` on a plain dict (what every bound fact is): a dict has no attribute ``name``, so
  the sandbox's ``getattr`` would fail, then fall back to ``x['name']``; here the item is read
  first when the name is not one of dict's own attributes (``x.items`` stays the method);
* :func:`render` builds the template's context directly from a context the caller made for
  this render (no copy, no merge with the globals, which the caller includes).
"""

from __future__ import annotations

from typing import Any

import jinja2
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

_DICT_ATTRIBUTES = frozenset(dir(dict))


def _escape_markdown(value: Any) -> Any:
    """Text from the record must not inject HTML or break a Markdown table."""
    if isinstance(value, str):
        if "<" in value or ">" in value or "|" in value:
            return value.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        return value
    return "" if value is None else value


class CardTemplates(SandboxedEnvironment):
    """The sandbox, reading a plain dict's items without first failing an attribute lookup."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            if attribute not in _DICT_ATTRIBUTES:
                try:
                    return obj[attribute]
                except KeyError:
                    return self.undefined(obj=obj, name=attribute)
            if not attribute.startswith("_"):  # dict's methods: safe, and never str.format
                return getattr(obj, attribute)
        return super().getattr(obj, attribute)


TEMPLATES = CardTemplates(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
    finalize=_escape_markdown,
)


def render(template: jinja2.Template, ctx: dict[str, Any]) -> str:
    """``template.render(ctx)`` without its two copies of the context (``render`` copies it,
    then merges it into the globals): ``ctx`` is built for this render and carries the globals
    itself. A template's own ``{% set %}`` writes to the Jinja context's locals, never into
    ``ctx``. (The context's ``globals_keys`` only serve ``{% import %}``, which needs a loader
    this environment does not have.)"""
    context = Context(TEMPLATES, ctx, template.name, template.blocks)
    return "".join(template.root_render_func(context))
