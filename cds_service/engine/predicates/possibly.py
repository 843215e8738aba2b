"""``possibly``: a condition that may hold, for what must be said whenever it may apply.

Most rules speak only when their gate is true: an unknown gate leaves them unknown, and the
data-gaps card asks for what the gate needed. A few must speak whenever the gate may be true, or
what they say is said nowhere: the "record entries not read in full" card is gated on the
ketamine decision, which on patient-view is unknown exactly when TRD is, and the data-gaps card
then names only what TRD needed (rules/data-quality.yaml data-unreadable-resources).
"""

from __future__ import annotations

from typing import Any

from .core import TRUE, CompileContext, Env, Evaluator, Node, Result, compile_node, predicate
from .logic import Assess


class Possibly(Assess):
    """One child, as :class:`~.logic.Assess` has: an Assess to the walks of a rule's leaves (the
    fetch windows of engine/windows.py, the medication horizon of engine/med_windows.py), which
    read what its child reads; any other node there is unknown to them (the horizon turns off)."""

    def compile(self) -> Evaluator:
        fn = self.child.evaluator()

        def possibly(env: Env) -> Result:
            r = fn(env)
            if r.value is None:
                return TRUE  # unknown: nothing of it is bound, nothing is asked for here
            return r

        return possibly

    def needs(self) -> set[str]:
        return self.child.needs()


@predicate(
    "possibly",
    "True when the condition is true or unknown (it may hold); false only when it is false. When "
    "true, it is the condition's answer (its bindings); when unknown, it binds nothing and asks for "
    "nothing: the condition's own rules ask for what it needs.",
)
def _possibly(args: Any, ctx: CompileContext) -> Node:
    return Possibly(compile_node(args, ctx))
