"""Numbers read from environment variables, checked the same way everywhere: a bad value stops
the command at start with a message naming the variable, never later in a background task."""

from __future__ import annotations

import math
from collections.abc import Mapping

from meshgate.errors import StartupError


def env_number(environ: Mapping[str, str], name: str, default: float, low: float, high: float, expected: str) -> float:
    """`environ[name]` as a number from `low` to `high` (`default` when unset or empty);
    StartupError `NAME=VALUE: expected <expected>` otherwise."""
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not low <= value <= high:  # (NaN compares false: refused too)
        raise StartupError(f"{name}={text}: expected {expected}")
    return value
