"""The audit log's control-plane half: one JSON line per config change.

`--audit-log PATH` makes two writers append JSON lines to one file: this module, for every
change of the config (which objects were added, changed or deleted, from which file and line,
the snapshot version before and after, and whether it was accepted and why not), and Envoy, for
every request it denied or rate-limited itself (meshgate.xds.translator.audit). Each line is one
`write()` to a file opened with O_APPEND, so lines from the two writers never interleave.

Nothing secret is written: objects are named by kind/namespace/name, never by content, and the
problem messages are the same ones the logs show (they never quote a secret value).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone

from meshgate.providers.store import ObjectKey

log = logging.getLogger(__name__)


def object_name(key: ObjectKey) -> str:
    _group, kind, namespace, name = key
    return f"{kind}/{namespace}/{name}"


@dataclass
class _Seen:
    generation: int
    file: str
    line: int


class ConfigAudit:
    """Diffs each applied config against the previous one and appends what changed."""

    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.source = source  # the files or the Kubernetes API, as messages name it
        self._objects: dict[ObjectKey, _Seen] = {}
        self._problems: set[str] = set()
        self._started = False

    def record(self, *, outcome: str, old_version: str | None, new_version: str | None,
               objects: dict[ObjectKey, tuple[int, str, int]], problems: list[str]) -> None:
        """`outcome`: accepted, partially_accepted (valid objects published, invalid ones kept
        at their last valid version or left out), or rejected (nothing could be published).
        `objects`: key -> (generation, file, line) of every object now serving."""
        current = {k: _Seen(*v) for k, v in objects.items()} if outcome != "rejected" else self._objects
        changes = []
        for key, seen in current.items():
            before = self._objects.get(key)
            if before is None:
                changes.append(self._change(key, "added", None, seen))
            elif before.generation != seen.generation:
                changes.append(self._change(key, "changed", before, seen))
        for key, before in self._objects.items():
            if key not in current:
                changes.append(self._change(key, "deleted", before, None))
        new_problems = [p for p in problems if p not in self._problems]
        if self._started and not changes and not new_problems and set(problems) == self._problems:
            return  # nothing happened that an auditor would want to read
        event = {
            # The same form as Envoy's lines: 2026-12-04T03:43:49.496Z (UTC, milliseconds).
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": "config_loaded" if not self._started else "config_changed",
            "source": self.source,
            "outcome": outcome,
            "version": {"old": old_version, "new": new_version},
            "changes": sorted(changes, key=lambda c: c["object"]),
            # Every problem of the config as it is now (FILE:LINE: field: message); `new` are the
            # ones this change introduced.
            "problems": problems,
            "new_problems": new_problems,
        }
        self._objects = current  # a rejected config changed nothing: diff the next one against what serves
        self._problems = set(problems)
        self._started = True
        self.write(event)

    @staticmethod
    def _change(key: ObjectKey, change: str, before: _Seen | None, after: _Seen | None) -> dict:
        where = after or before
        assert where is not None
        return {"object": object_name(key), "change": change, "file": where.file,
                "line": where.line if where.line > 0 else None,  # None: no file line (the Kubernetes API)
                "generation": {"old": before.generation if before else None,
                               "new": after.generation if after else None}}

    def write(self, event: dict) -> None:
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        try:
            # O_APPEND: the kernel appends each write at the end, so Envoy's lines and ours don't
            # overwrite each other; opened per event so a rotated file (logrotate) is followed.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:  # the audit log must not stop the control plane: say so loudly
            log.error("audit log not written", extra={"path": self.path, "error": str(exc)})
