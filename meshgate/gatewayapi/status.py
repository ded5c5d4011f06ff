"""Per-object status: Gateway API conditions on every Gateway (and each of its listeners), route
(per parentRef) and policy, so that one bad object is reported on that object and never hides or
blocks the others.

Condition types and reasons are Gateway API's (https://gateway-api.sigs.k8s.io/reference/spec/):
`Accepted`, `ResolvedRefs`, `Programmed`, `Conflicted`, with reasons such as `NoMatchingParent`,
`NotAllowedByListeners`, `BackendNotFound`, `RefNotPermitted`, `InvalidCertificateRef`,
`TargetNotFound`. Every condition that reports a problem also becomes a `ConfigError` (file, line,
field), which is what `meshgate validate` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshgate.providers.file.loader import SourceDocument
from meshgate.api.models import Resource
from meshgate.errors import ConfigError, format_location

ObjectKey = tuple[str, str, str, str]  # (API group, kind, namespace, name)


def object_key(resource: Resource) -> ObjectKey:
    group = resource.api_version.split("/")[0] if "/" in resource.api_version else ""
    return (group, resource.kind, resource.metadata.namespace, resource.metadata.name)


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "status": self.status, "reason": self.reason, "message": self.message}


def _upsert(conditions: list[Condition], condition: Condition) -> None:
    """One condition per type; a problem (status False, or Conflicted True) wins over success."""
    for i, existing in enumerate(conditions):
        if existing.type == condition.type:
            if _is_problem(existing) and not _is_problem(condition):
                return  # keep the first problem reported
            conditions[i] = condition
            return
    conditions.append(condition)


def _is_problem(c: Condition) -> bool:
    return (c.status == "False") != (c.type == "Conflicted") or (c.type == "Conflicted" and c.status == "True")


@dataclass
class ObjectStatus:
    kind: str
    namespace: str
    name: str
    origin: str  # "file:line" (or a cluster object reference, for the Kubernetes provider)
    conditions: list[Condition] = field(default_factory=list)
    # Gateways: conditions per listener name; routes: conditions per parentRef index.
    listeners: dict[str, list[Condition]] = field(default_factory=dict)
    parents: dict[int, list[Condition]] = field(default_factory=dict)
    parent_refs: dict[int, str] = field(default_factory=dict)  # index -> "Gateway ns/name[/section]"
    attached_routes: dict[str, int] = field(default_factory=dict)  # Gateways: routes per listener

    @property
    def ok(self) -> bool:
        every = [*self.conditions, *(c for cs in self.listeners.values() for c in cs),
                 *(c for cs in self.parents.values() for c in cs)]
        return not any(_is_problem(c) for c in every)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "namespace": self.namespace, "name": self.name, "origin": self.origin,
            "conditions": [c.as_dict() for c in self.conditions],
        }
        if self.listeners:
            out["listeners"] = [{"name": n, "attachedRoutes": self.attached_routes.get(n, 0),
                                 "conditions": [c.as_dict() for c in cs]} for n, cs in self.listeners.items()]
        if self.parents:
            out["parents"] = [{"parentRef": self.parent_refs.get(i, str(i)), "conditions": [c.as_dict() for c in cs]}
                              for i, cs in sorted(self.parents.items())]
        return out


class StatusBook:
    """Collects conditions per object, and the `ConfigError` lines of every problem."""

    def __init__(self) -> None:
        self.objects: dict[ObjectKey, ObjectStatus] = {}
        self.problems: list[ConfigError] = []
        self._docs: dict[ObjectKey, SourceDocument] = {}
        # id(resource) -> key, filled by whoever knows the keys already (the translator): the
        # key of a route is asked for several times per translation.
        self.keys: dict[int, ObjectKey] = {}

    def key(self, resource: Resource) -> ObjectKey:
        return self.keys.get(id(resource)) or object_key(resource)

    def track(self, key: ObjectKey, doc: SourceDocument, kind: str) -> ObjectStatus:
        self._docs[key] = doc
        status = self.objects.get(key)
        if status is None:
            status = self.objects[key] = ObjectStatus(kind, key[2], key[3], format_location(doc.file, doc.line))
        return status

    def of(self, resource: Resource) -> ObjectStatus:
        return self.objects[self.key(resource)]

    def _report(self, key: ObjectKey, where: tuple, message: str) -> None:
        doc = self._docs.get(key)
        if doc is not None:
            self.problems.append(doc.error(where, message))

    def condition(self, resource: Resource, condition: Condition, where: tuple | None = None) -> None:
        """Set an object-level condition; `where` (a field path) makes it a reported problem."""
        key = self.key(resource)
        _upsert(self.objects[key].conditions, condition)
        if where is not None:
            self._report(key, where, condition.message)

    def listener(self, gateway: Resource, name: str, condition: Condition, where: tuple | None = None) -> None:
        key = self.key(gateway)
        _upsert(self.objects[key].listeners.setdefault(name, []), condition)
        if where is not None:
            self._report(key, where, condition.message)

    def attached(self, gateway: Resource, listener: str) -> None:
        """Count one route attached to a listener (Gateway API's `attachedRoutes`)."""
        counts = self.objects[self.key(gateway)].attached_routes
        counts[listener] = counts.get(listener, 0) + 1

    def parent(self, route: Resource, index: int, ref: str, condition: Condition, where: tuple | None = None) -> None:
        key = self.key(route)
        status = self.objects[key]
        status.parent_refs[index] = ref
        _upsert(status.parents.setdefault(index, []), condition)
        if where is not None:
            self._report(key, where, condition.message)
