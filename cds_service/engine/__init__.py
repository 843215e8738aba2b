"""The rule engine: YAML rules compiled once, evaluated per request with three-valued logic."""

from . import record_predicates  # noqa: F401  (registers the allergy, vital-status and order-set predicates)
