"""Random identifiers made often: ``str(uuid.uuid4())`` without a UUID object per call.

``uuid.uuid4()`` builds a UUID object (an int from 16 bytes, checks, then ``__str__`` slices its hex):
~20 k instructions, for a request id on every call. Here 16 bytes of one ``os.urandom`` read of
4 KiB (one system call per 256 ids) get the version and variant bits set and are written in the
same 8-4-4-4-12 form. The bytes are not reused after a fork: a gunicorn worker draws its own.
"""

from __future__ import annotations

import os
import threading

_POOL = bytearray()  # os.urandom bytes not yet handed out
_LOCK = threading.Lock()


def uuid4() -> str:
    """A random (version 4, RFC 4122 variant) UUID as ``str(uuid.uuid4())`` writes it."""
    with _LOCK:
        if len(_POOL) < 16:
            _POOL.extend(os.urandom(4096))
        b = _POOL[-16:]
        del _POOL[-16:]
    b[6] = b[6] & 0x0F | 0x40
    b[8] = b[8] & 0x3F | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _forget_after_fork() -> None:
    global _LOCK
    _POOL.clear()  # the parent's bytes: another worker may hand out the same ones
    _LOCK = threading.Lock()  # a lock held by a parent's thread at the fork would never be released


os.register_at_fork(after_in_child=_forget_after_fork)
