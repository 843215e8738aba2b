"""Which prefetch keys each predicate reads (``engine/unread.py``): a key not read in fetch mode
makes the facts resting on it unknown, so every predicate must say what it reads."""

from __future__ import annotations

from cds_service.engine import unread
from cds_service.engine.predicates import REGISTRY


def test_every_predicate_declares_the_keys_it_reads() -> None:
    declared = set(unread.KEYS) | unread.OBSERVATION_PREDICATES | unread.CONTEXT_ONLY
    assert sorted(set(REGISTRY) - declared) == []
    assert not set(unread.KEYS) & unread.CONTEXT_ONLY


def test_a_predicate_declared_nowhere_is_taken_to_read_every_key() -> None:
    """A new predicate someone forgets to declare: an unread key makes its 'false' unknown, as
    if it read that key, rather than letting an absence pass as clear."""
    missing = {"medicationRequests": "deadline", "conditions": "failed"}
    assert unread.unread_keys("a_new_predicate", {}, False, missing) == ["medicationRequests", "conditions"]
    assert unread.unread_keys("sex", {}, False, missing) == []
    assert unread.unread_keys("condition", {}, False, missing) == ["conditions"]
    assert unread.unread_keys("condition", {}, True, missing) == []
