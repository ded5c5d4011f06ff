"""Reuse of per-object results between reloads.

The document cache (`meshgate.api.loader.DocumentCache`) hands back the very same parsed objects
for files that did not change. A step that depends only on a few objects (a route, the Gateways
it attaches to, the Backends it references) can therefore keep its result while those objects
are identical (`is`), and a reload after editing one route of 10,000 recomputes that route only.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class Memo:
    def __init__(self) -> None:
        # (step, id(obj)) -> (obj, deps, value). Holding obj keeps its id from being reused.
        self._entries: dict[tuple[str, int], tuple[Any, tuple[Any, ...], Any]] = {}
        self._used: set[tuple[str, int]] = set()

    def get(self, step: str, obj: Any, deps: Sequence[Any], compute: Callable[[], T]) -> T:
        """`compute()`, or its earlier result for this very `obj` with these very `deps`."""
        key = (step, id(obj))
        entry = self._entries.get(key)
        if (entry is None or entry[0] is not obj or len(entry[1]) != len(deps)
                or not all(map(operator.is_, entry[1], deps))):
            entry = (obj, tuple(deps), compute())
            self._entries[key] = entry
        self._used.add(key)
        return entry[2]

    def sweep(self) -> None:
        """Forget results not asked for since the last sweep (objects that left the config)."""
        self._entries = {k: v for k, v in self._entries.items() if k in self._used}
        self._used = set()
