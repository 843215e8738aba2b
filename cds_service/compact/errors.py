"""The one error of compact cases."""

from __future__ import annotations


class CaseError(ValueError):
    """A compact case that cannot be built; the message names the case and the entry."""
