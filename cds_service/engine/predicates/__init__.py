"""The closed vocabulary of predicates a rule's ``when`` is written in.

The machinery (results, registry, compile context, memoised leaves) is in :mod:`.core`; each
family of predicates has its module, and importing this package registers them all.
"""

from . import (  # noqa: F401  (importing a family registers its predicates)
    conditions,
    context,
    dosing,
    logic,
    medications,
    observations,
    pathway,
    possibly,
    record,
    retrieval,
    sessions,
    trd,
)
from .core import (
    COMPARATORS,
    REGISTRY,
    CompileContext,
    CompileError,
    Env,
    Evaluator,
    Leaf,
    Missing,
    Node,
    Result,
    check_args,
    compare,
    compile_node,
    predicate,
)
from .trd import assess_trd
from .views import clinical_number, concept_name, drug_name, med_view, num, obs_view, once

__all__ = [
    "COMPARATORS",
    "REGISTRY",
    "CompileContext",
    "CompileError",
    "Env",
    "Evaluator",
    "Leaf",
    "Missing",
    "Node",
    "Result",
    "assess_trd",
    "check_args",
    "clinical_number",
    "compare",
    "compile_node",
    "concept_name",
    "drug_name",
    "med_view",
    "num",
    "obs_view",
    "once",
    "predicate",
]
