"""Types and ranges of settings, declared once where each setting is defined and checked on the way in.

TrainConfig declares each field's range in its annotation (``Annotated[int, "[0, inf)"]``); an objective's
record declares its hyperparameters' ranges in ``Objective.ranges``. A range is an interval written as in
mathematics, ``"[0, inf)"``, ``"(0, 1)"``, ``"(0, inf]"``, or a tuple of allowed values (``("mse", "bce")``).
Every error names the setting and what it allows:

    max_steps must be an integer in [0, inf), got 2.5
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field


class SettingError(ValueError):
    """A setting of the wrong type or outside its range (the message names it and what it allows)."""


_INTERVAL = re.compile(r"^([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])$")


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    closed_low: bool
    closed_high: bool
    text: str = field(default="", compare=False)  # as declared, for messages

    @classmethod
    def parse(cls, text: str) -> Interval:
        match = _INTERVAL.match(text.strip())
        if match is None:
            raise ValueError(f"not an interval: {text!r} (write e.g. '[0, inf)' or '(0, 1)')")
        left, low, high, right = match.groups()
        interval = cls(float(low), float(high), left == "[", right == "]", f"{left}{low}, {high}{right}")
        if interval.low > interval.high or math.isnan(interval.low) or math.isnan(interval.high):
            raise ValueError(f"empty interval: {text!r}")
        return interval

    def __contains__(self, x) -> bool:
        if isinstance(x, float) and math.isnan(x):
            return False
        above = x >= self.low if self.closed_low else x > self.low
        below = x <= self.high if self.closed_high else x < self.high
        return above and below

    def __str__(self) -> str:
        left, right = "[" if self.closed_low else "(", "]" if self.closed_high else ")"
        return self.text or f"{left}{self.low:g}, {self.high:g}{right}"


def allowed(spec) -> Interval | tuple | None:
    """A range as declared (interval text, tuple of choices, or None) in its checked form."""
    if spec is None or isinstance(spec, (Interval, tuple)):
        return spec
    if isinstance(spec, str):
        return Interval.parse(spec)
    raise TypeError(f"a range is an interval such as '[0, inf)' or a tuple of choices, got {spec!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check(name: str, value, kind: type, spec=None, optional: bool = False):
    """`value` checked against its type (int, float, bool, str or dict) and range; returns it, an integral
    float given for an int as an int and a path as a string. Raises SettingError naming `name`."""
    spec = allowed(spec)
    if value is None and optional:
        return None

    def fail(what):
        raise SettingError(f"{name} must be {what}{' (or null)' if optional else ''}, got {value!r}")

    if kind is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if kind is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(spec, tuple):
            if value not in spec:
                fail(f"one of {', '.join(repr(c) for c in spec)}")
            return value
        if not isinstance(value, str) or not value.strip():
            fail("a non-empty string")
        return value
    if kind is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            fail("a mapping of names to values")
        return value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            fail(f"an integer in {spec}" if spec else "an integer")
    elif kind is float:
        if not _is_number(value):
            fail(f"a number in {spec}" if spec else "a number")
    else:
        raise AssertionError(f"no check for type {kind}")
    if spec is not None and value not in spec:
        fail(f"{'an integer' if kind is int else 'a number'} in {spec}")
    return value


__all__ = ["Interval", "SettingError", "allowed", "check"]
