"""Errors the storage backends raise, whatever the database behind them."""

from __future__ import annotations


class SchemaError(RuntimeError):
    """The database's schema does not fit this version of the service (the message says what to do)."""


class StorageUnavailable(RuntimeError):
    """The database could not be reached or refused the write: nothing was stored.
    The message names the backend and the error class, never a connection string or a value."""
