"""The predicate that says a fetch-mode answer is partial (keys not read: ``engine/unread.py``)."""

from __future__ import annotations

from typing import Any

from .core import CompileContext, Env, Leaf, Node, Result, check_args, not_read, predicate


@predicate(
    "record_read",
    "Every prefetch key was read (prefetched or fetched): true; unknown, asking for each key that "
    "could not be read from the FHIR server (deadline, limits, a failed page), otherwise.",
)
def _record_read(args: Any, ctx: CompileContext) -> Node:
    check_args(args or {}, set(), set())

    def run(env: Env, _a: dict[str, Any]) -> Result:
        unread = env.facts.record.unread
        return not_read(sorted(unread)) if unread else Result(True)

    return Leaf("record_read", run, {}, set())
