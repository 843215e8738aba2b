"""The rule engine: YAML rules compiled once, evaluated per request with three-valued logic."""

from . import predicates  # noqa: F401  (registers the whole predicate vocabulary)
