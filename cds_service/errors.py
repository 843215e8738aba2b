"""Client errors carried as exceptions and rendered as one small JSON shape."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request the service refuses: an HTTP status, a message and the offending field."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "error": self.message}
        if self.field:
            body["field"] = self.field
        return body


class DataUnavailable(Exception):
    """Data the rules need could be neither prefetched nor fetched (CDS Hooks: HTTP 412)."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.message = message
        self.missing = missing
