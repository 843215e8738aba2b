"""A value computed on first read and kept in the instance (one request's facts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class lazy(Generic[T]):  # noqa: N801 - used as a decorator, like the property it replaces
    """``functools.cached_property`` without its lock: Python 3.11's takes one lock per property,
    shared by every instance (so by every request in a threaded worker), and costs ~6 k
    instructions per first read; 3.12 dropped it. Only for objects one thread owns (a request's
    :class:`~.facts.Facts`). After the first read the value is in the instance's ``__dict__``,
    which Python looks in before this (non-data) descriptor: later reads are plain attributes."""

    def __init__(self, func: Callable[[Any], T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> lazy[T]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...
    def __get__(self, instance: object | None, owner: type | None = None) -> T | lazy[T]:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.func(instance)
        return value
