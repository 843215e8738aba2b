"""cds_service/ids.py: random UUIDs as str(uuid.uuid4()) writes them, never repeated after a fork."""

from __future__ import annotations

import uuid

from cds_service import ids

from .support.forks import child_and_parent_ids


def test_a_version_4_uuid_in_the_standard_form() -> None:
    made = [ids.uuid4() for _ in range(1000)]  # several refills of the pool
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert len(set(made)) == len(made)


def test_a_forked_child_never_hands_out_the_parents_bytes() -> None:
    ids.uuid4()  # the pool now holds bytes the parent has not handed out yet
    child, parent = child_and_parent_ids(ids.uuid4)
    assert len(child) == 20 and not child & parent
