"""Checks for stage settings, so a bad value fails when the stage is built, not after a
generation has run (and so a trustgain.json with ``NaN`` or ``"12"`` never gets that far).

Each returns the value in its canonical type or raises :class:`SettingError` naming the
setting. Hand-written: the stages are plain dataclasses (no pydantic dependency for eight
checks), and JSON's types (bool is not an int here, NaN is not a number) need saying.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

from trustgain.errors import SettingError


def integer(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingError(f"{name} must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise SettingError(f"{name} must be {bounds}, not {value}")
    return int(value)


def number(name: str, value: Any, lo: float, *, lo_open: bool = False,
           optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise SettingError(f"{name} must be a finite number, not {value!r}")
    if value < lo or (lo_open and value == lo):
        raise SettingError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, not {value:g}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SettingError(f"{name} must be true or false, not {value!r}")
    return value


def text(name: str, value: Any, *, optional: bool = False, path: bool = False) -> str | None:
    if value is None and optional:
        return None
    if path and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise SettingError(f"{name} must be a non-empty {'path' if path else 'string'}, "
                           f"not {value!r}")
    return value
