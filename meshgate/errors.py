"""Every error meshgate raises on purpose, in one file.

Catch `MeshgateError` to catch them all. Configuration problems are `ConfigError`s: each one
names a file, a line and a field, and prints as one line a user can act on::

    routes/shop.yaml:14: spec.rules[0].matches[1].path.value: must start with "/"

`ConfigErrors` carries every problem found in one pass, so a user fixes them all at once
instead of one per run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "EnvoyError",
    "FileReadError",
    "InconsistentSnapshot",
    "MeshgateError",
    "StartupError",
    "NO_LINE",
    "format_field_path",
    "format_location",
]

# The "line" of a document that is not a file: a Kubernetes object, whose origin
# (`kubernetes:HTTPRoute NAMESPACE/NAME`) already says where it is, so no line is printed.
NO_LINE = -1


def format_location(file: str, line: int) -> str:
    """`FILE:LINE`, or the origin alone for a document that has no lines (`NO_LINE`)."""
    return file if line == NO_LINE else f"{file}:{line}"


class MeshgateError(Exception):
    """
    Base of every error meshgate raises on purpose.
    """


class ConfigError(MeshgateError):
    """
    One problem in the configuration: a file that cannot be read, YAML that does not parse, a
    missing environment variable, or a field with a wrong value.

    Equal errors compare equal, so they can be de-duplicated and asserted on in tests.
    """

    # Kept in `args` (not in extra attributes) so the error pickles and compares by value; it is
    # not a frozen dataclass because contextlib assigns `__traceback__` on exceptions it re-raises.
    def __init__(self, file: str, line: int, field: str, message: str) -> None:
        super().__init__(file, line, field, message)

    @property
    def file(self) -> str:
        """Path of the file as the user gave it; a relative path stays relative."""
        return self.args[0]

    @property
    def line(self) -> int:
        """1-based line of the problem; 0 when unknown (e.g. the file cannot be read)."""
        return self.args[1]

    @property
    def field(self) -> str:
        """Dotted field path like ``spec.rules[0].matches``; ``""`` when not about a field."""
        return self.args[2]

    @property
    def message(self) -> str:
        """What is wrong, in words for the user."""
        return self.args[3]

    def __str__(self) -> str:
        where = format_location(self.file, self.line)
        if self.field == "":
            return f"{where}: {self.message}"
        return f"{where}: {self.field}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"ConfigError(file={self.file!r}, line={self.line!r}, "
            f"field={self.field!r}, message={self.message!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigError):
            return NotImplemented
        return self.args == other.args

    def __hash__(self) -> int:
        return hash(self.args)


class ConfigErrors(MeshgateError):
    """
    Several `ConfigError`s found in one pass over the configuration; raised when a whole
    configuration is rejected. `errors` is sorted by file, line and field.
    """

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        # Stable sort: errors on the same field keep the order they were found in.
        ordered = sorted(errors, key=lambda e: (e.file, e.line, e.field))
        super().__init__(ordered)
        self.errors: list[ConfigError] = ordered

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


# A key that can be written after a dot without ambiguity; anything else (such as the
# annotation key "example.com/owner") is written in brackets and quotes.
_PLAIN_KEY = re.compile(r"[^.\[\]\s\"']+")


def format_field_path(parts: tuple[str | int, ...]) -> str:
    """
    Write a field path the way users read it: ``("spec", "rules", 0, "matches")`` becomes
    ``spec.rules[0].matches``; a key that holds a dot or a bracket is quoted,
    ``metadata.annotations["example.com/owner"]``. The empty path is ``""``.
    """
    out: list[str] = []
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out.append(f"[{part}]")
            continue
        key = str(part)
        if _PLAIN_KEY.fullmatch(key):
            out.append(f".{key}" if out else key)
        else:
            out.append(f"[{json.dumps(key)}]")
    return "".join(out)


class FileReadError(MeshgateError):
    """
    A file a user named cannot be read as configuration: missing, unreadable, not a regular file
    (a directory, FIFO or device) or over the size cap. `reason` says why in words for the user
    ("is a directory").
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)

    @property
    def path(self) -> str:
        return self.args[0]

    @property
    def reason(self) -> str:
        return self.args[1]

    def __str__(self) -> str:
        return f"cannot read {self.path}: {self.reason}"


class InconsistentSnapshot(MeshgateError):
    """
    A snapshot references resources it does not contain, or contains ones nobody references (a
    translator bug): it is refused and the previous snapshot stays. `problems` lists them.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("inconsistent snapshot: " + "; ".join(self.problems))


class EnvoyError(MeshgateError):
    """
    Envoy cannot start, or does not become reachable or ready in time. The message ends with the
    tail of Envoy's output and log, which says why.
    """


class StartupError(MeshgateError):
    """
    `meshgate run` / `meshgate xds` cannot start a server or Envoy (e.g. a port in use).
    """
