"""JSON in and out with every digit: jsonb numbers read as Decimal and written back as the same JSON number.

A float keeps about 17 significant digits, so 12345678901234567890.12 would come back as 1.2345678901234567e19.
The standard encoder writes a Decimal only as a string (Flask's default) or not at all, so a body holding one is
encoded by the pure-Python encoder told how to spell it; bodies without one keep the fast C encoder.
"""

import decimal
import functools
import json
import json.encoder

from flask.json.provider import DefaultJSONProvider

loads = functools.partial(json.loads, parse_float=decimal.Decimal)


class _HasDecimal(Exception):
    """The fast encoder met a Decimal: encode again with the exact one."""


class _ExactNumber(float):
    """A float that knows its exact spelling: how a Decimal reaches the encoder's number branch."""

    text: str

    def __new__(cls, value: decimal.Decimal):
        number = super().__new__(cls, float(value))
        number.text = str(value)
        return number


def _floatstr(value: float, _repr=float.__repr__) -> str:
    if isinstance(value, _ExactNumber):
        return value.text
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
    return _repr(value)


class _ExactEncoder(json.JSONEncoder):
    def __init__(self, *, fallback=None, **kwargs):
        super().__init__(**kwargs)
        self.fallback = fallback

    def default(self, o):
        if isinstance(o, decimal.Decimal):
            if not o.is_finite():
                raise ValueError(f"{o} is not a JSON number")
            return _ExactNumber(o)
        return self.fallback(o) if self.fallback else super().default(o)

    def iterencode(self, o, _one_shot=False):
        markers = {} if self.check_circular else None
        encode = json.encoder.encode_basestring_ascii if self.ensure_ascii else json.encoder.encode_basestring
        return json.encoder._make_iterencode(
            markers, self.default, encode, self.indent, _floatstr, self.key_separator, self.item_separator,
            self.sort_keys, self.skipkeys, _one_shot)(o, 0)


def dumps(obj, default=None, **kwargs) -> str:
    """json.dumps that writes a Decimal as the JSON number it spells (no float rounding, no quotes)."""
    def fast_default(o):
        if isinstance(o, decimal.Decimal):
            raise _HasDecimal
        if default is None:
            raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")
        return default(o)
    try:
        return json.dumps(obj, default=fast_default, **kwargs)
    except _HasDecimal:
        return json.dumps(obj, cls=_ExactEncoder, fallback=default, **kwargs)


class ExactJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider (sorted keys, its types) with Decimals written exactly."""

    def dumps(self, obj, **kwargs) -> str:
        kwargs.setdefault("default", self.default)
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        return dumps(obj, **kwargs)
