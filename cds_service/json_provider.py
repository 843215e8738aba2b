"""Flask's JSON responses written by orjson (the request bodies are read by orjson too).

The standard library's encoder was ~3 % of a typical order-sign call's server CPU. Output is the
same JSON: compact, keys in insertion order, UTF-8 rather than ``\\u`` escapes (both are valid and
mean the same). Whatever orjson would write differently from Flask's provider goes through
Flask's own ``default`` (dates as HTTP dates, dataclasses, UUIDs, ``__html__``); a value orjson
cannot write at all (an integer beyond 64 bits, a subclass Flask's ``default`` does not know)
falls back to the standard library, so nothing that worked before fails now. One difference: a
float NaN or infinity is written as ``null`` (the standard library writes ``NaN``, which is not JSON).
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider

_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME  # Flask writes dates as HTTP dates: its default decides
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
#: int keys become strings, as json.dumps does. Only on a second try: with it orjson takes its slow
#: path for every dict (a card response costs half as much again, ~85 k instructions), and a key
#: that is not a string makes the first try raise TypeError (nothing is written twice).
_NON_STR_KEYS = _OPTIONS | orjson.OPT_NON_STR_KEYS


class OrjsonProvider(DefaultJSONProvider):
    sort_keys = False
    compact = True

    def _fast(self, obj: Any) -> bytes | None:
        if self.sort_keys or self.compact is False or (self.compact is None and self._app.debug):
            return None
        try:
            return orjson.dumps(obj, default=self.default, option=_OPTIONS)
        except TypeError:
            pass
        try:
            return orjson.dumps(obj, default=self.default, option=_NON_STR_KEYS)
        except TypeError:
            return None

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        fast = None if kwargs else self._fast(obj)
        return fast.decode() if fast is not None else super().dumps(obj, **kwargs)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        fast = self._fast(self._prepare_response_obj(args, kwargs))
        if fast is None:
            return super().response(*args, **kwargs)
        return self._app.response_class(fast + b"\n", mimetype=self.mimetype)
