"""The local line-of-therapy pathway: which steps the record shows."""

from __future__ import annotations

from typing import Any

from .core import CompileContext, Env, Leaf, Node, Result, check_args, predicate


@predicate(
    "pathway_steps",
    "Counts line-of-therapy steps from the record: failed trials in `ssri_valueset` (need `min_ssri`), "
    "an antidepressant of another class, an augmentation agent, a combination of two antidepressants "
    "overlapping `combination_days`, and ECT. True when every step is found.",
)
def _pathway(args: Any, ctx: CompileContext) -> Node:
    allowed = {
        "antidepressant_valueset",
        "ssri_valueset",
        "augmentation_valueset",
        "ect_valueset",
        "min_ssri",
        "combination_days",
        "min_duration_days",
    }
    a = check_args(args, allowed, allowed - {"min_ssri", "combination_days", "min_duration_days"})
    spec = {
        "ad": ctx.valueset(a["antidepressant_valueset"], "medication", ("antidepressant_valueset",)),
        "ssri": ctx.valueset(a["ssri_valueset"], "medication", ("ssri_valueset",)),
        "aug": ctx.valueset(a["augmentation_valueset"], "medication", ("augmentation_valueset",)),
        "ect": ctx.valueset(a["ect_valueset"], "procedure", ("ect_valueset",)),
        "min_ssri": ctx.number(a, "min_ssri", 2),
        "combo": ctx.number(a, "combination_days", 28),
        "min_days": ctx.number(a, "min_duration_days", 28),
    }

    def run(env: Env, s: dict[str, Any]) -> Result:
        f = env.facts
        ad_trials = [t for t in f.trials(s["ad"]) if t.days >= s["min_days"]]
        ssri = {t.ingredient for t in f.trials(s["ssri"]) if t.days >= s["min_days"]}
        other = {t.ingredient for t in ad_trials} - ssri
        aug = {t.ingredient for t in f.trials(s["aug"]) if t.days >= s["min_days"]}
        combination = any(
            a.ingredient != b.ingredient and (min(a.end, b.end) - max(a.start, b.start)).days >= s["combo"]
            for i, a in enumerate(ad_trials)
            for b in ad_trials[i + 1 :]
        )
        ect = bool(f.procedures_in(s["ect"]))
        steps = {
            f"{s['min_ssri']:g} SSRIs": len(ssri) >= s["min_ssri"],
            "another antidepressant class": bool(other),
            "augmentation": bool(aug),
            "combination of antidepressants": combination,
            "ECT": ect,
        }
        done = [k for k, v in steps.items() if v]
        missing = [k for k, v in steps.items() if not v]
        return Result(not missing, bind={"pathway": {"done": done, "missing": missing, "count": len(done)}})

    return Leaf("pathway_steps", run, spec, {f"valueset:{spec['ad']}"})
