"""Ids drawn in a forked child and then in its parent, for tests that a fork never repeats ids."""

from __future__ import annotations

import os
from collections.abc import Callable


def child_and_parent_ids(make: Callable[[], str], n: int = 20) -> tuple[set[str], set[str]]:
    """``n`` ids the child makes right after a fork, and ``n`` the parent makes after it."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, ",".join(make() for _ in range(n)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = set(f.read().split(","))
    os.waitpid(pid, 0)
    return child, {make() for _ in range(n)}
