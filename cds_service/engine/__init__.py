"""The rule engine: YAML rules compiled once, evaluated per request with three-valued logic."""
