"""Per-tenant limits: at most so many objects, and so many routes, per namespace.

Namespaces are tenants; one tenant creating thousands of routes (a runaway script, a loop in a
Helm chart) would otherwise make every reload slower for every tenant, and grow the control
plane's memory and Envoy's config without bound. With limits set (`--max-objects-per-namespace`,
`--max-routes-per-namespace`; both off by default), the objects of a namespace beyond its limit
are not programmed:

- which ones: Gateway API's own precedence decides, oldest first (`metadata.creationTimestamp`,
  then by kind and name; files have no timestamp, so names decide): the oldest N are kept, so
  objects that serve today keep serving when a tenant adds more; the newest are left out;
- their status: `Accepted=False`, reason `NamespaceLimitExceeded`, saying which limit and how to
  get under it; `Programmed=False`;
- a warning is logged once per object left out (again only if it was back under, then over);
- `meshgate_namespace_objects_over_limit{namespace, limit}` counts them (a gauge: now, not ever);
- other namespaces are not affected.

What counts: the objects a tenant writes for meshgate (Gateways, routes, ReferenceGrants,
Backends, policies, GRPCJSONTranscoders), valid or serving their last valid version. Services,
EndpointSlices, Secrets, ConfigMaps and Namespaces are not counted: they are the cluster's, and
meshgate only reads the ones routes name. Routes (Gateway API HTTPRoute and GRPCRoute,
meshgate's HTTPRoute) count toward both limits; the route limit is applied first.

`NamespaceLimits.apply` runs between the object store and the translator, `report` after it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from meshgate.errors import format_location
from meshgate.gatewayapi.status import Condition, ObjectKey, ObjectStatus, object_key

if TYPE_CHECKING:
    from meshgate.gatewayapi.translator import Translation
    from meshgate.providers.store import StoreView

log = logging.getLogger("meshgate.tenants")

__all__ = ["NamespaceLimits", "ROUTE_KINDS"]

GATEWAY_API = "gateway.networking.k8s.io"
ROUTE_KINDS = frozenset({(GATEWAY_API, "HTTPRoute"), (GATEWAY_API, "GRPCRoute"), ("meshgate.io", "HTTPRoute")})
# Kinds read from the cluster, not written by a tenant for meshgate: never counted.
_NOT_COUNTED = frozenset({("", "Secret"), ("", "ConfigMap"), ("", "Service"), ("", "Namespace"),
                          ("discovery.k8s.io", "EndpointSlice")})
REASON = "NamespaceLimitExceeded"


@dataclass
class NamespaceLimits:
    """The limits (None: no limit) and what they left out last time."""

    max_objects: int | None = None
    max_routes: int | None = None
    registry: Any = None  # a prometheus CollectorRegistry for the gauge (None: no metric)
    over: dict[ObjectKey, str] = field(default_factory=dict)  # left out by the last `apply`: key -> why
    origins: dict[ObjectKey, str] = field(default_factory=dict)  # their FILE:LINE (or cluster object)
    _gauge: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        for name, value in (("max_objects", self.max_objects), ("max_routes", self.max_routes)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or unset: no limit), not {value}")
        if self.registry is not None:
            from prometheus_client import Gauge

            self._gauge = Gauge("meshgate_namespace_objects_over_limit",
                                "Objects not programmed because their namespace is over a per-tenant limit "
                                "(--max-objects-per-namespace, --max-routes-per-namespace)",
                                ["namespace", "limit"], registry=self.registry)

    @property
    def enabled(self) -> bool:
        return self.max_objects is not None or self.max_routes is not None

    def apply(self, view: StoreView) -> StoreView:
        """`view` without the objects beyond their namespace's limits (the same view when none are)."""
        if not self.enabled:
            return view
        with self._lock:
            before = self.over
            self.over = over = self._over(view)
            self._log_new(before, over)
            self._count(over)
        if not over and not before:
            return view
        objects = [(r, d) for r, d in view.objects if object_key(r) not in over]
        serving = {k: o for k, o in view.serving.items() if k not in over}
        # Left out, so not "invalid but serving its last valid version" either; and a translation
        # patched from the last one can't know what the limits took away: translate in full.
        stale = {k: g for k, g in view.stale.items() if k not in over}
        return replace(view, objects=objects, serving=serving, stale=stale, changed=None)

    def report(self, translation: Translation) -> None:
        """Give the objects left out their status (replacing whatever the translation said)."""
        for key, why in sorted(self.over.items()):
            status = translation.status.objects.get(key)
            if status is None:
                status = translation.status.objects[key] = ObjectStatus(key[1], key[2], key[3], self.origins.get(key, ""))
            status.conditions[:] = [Condition("Accepted", "False", REASON, why),
                                    Condition("Programmed", "False", REASON, "not programmed: over the namespace's limit")]
            status.parents.clear()
            status.listeners.clear()

    # -- internals ---------------------------------------------------------------------------

    def _over(self, view: StoreView) -> dict[ObjectKey, str]:
        by_namespace: dict[str, list[tuple[tuple, ObjectKey]]] = {}
        origins: dict[ObjectKey, Any] = {}
        for resource, doc in view.objects:
            key = object_key(resource)
            if key in origins or (key[0], key[1]) in _NOT_COUNTED:
                continue  # an object defined twice counts once (the translator reports the copy)
            origins[key] = doc
            order = (resource.metadata.creation_timestamp or "", key[1], key[3], key[0])
            by_namespace.setdefault(key[2], []).append((order, key))
        over: dict[ObjectKey, str] = {}
        for ns, items in by_namespace.items():
            items.sort()
            kept = items
            if self.max_routes is not None:
                routes = [i for i in items if (i[1][0], i[1][1]) in ROUTE_KINDS]
                for n, (_, key) in enumerate(routes[self.max_routes:], self.max_routes + 1):
                    over[key] = (f"namespace {ns} has {len(routes)} routes, over its limit of {self.max_routes} "
                                 f"(--max-routes-per-namespace): the oldest are programmed, and this one is number "
                                 f"{n} by age; delete or merge routes to get under the limit")
                kept = [i for i in items if i[1] not in over]
            if self.max_objects is not None:
                for n, (_, key) in enumerate(kept[self.max_objects:], self.max_objects + 1):
                    over[key] = (f"namespace {ns} has {len(kept)} objects, over its limit of {self.max_objects} "
                                 f"(--max-objects-per-namespace): the oldest are programmed, and this one is number "
                                 f"{n} by age; delete objects to get under the limit")
        self.origins = {k: format_location(origins[k].file, origins[k].line) for k in over}
        return over

    def _log_new(self, before: dict[ObjectKey, str], over: dict[ObjectKey, str]) -> None:
        for key in sorted(over.keys() - before.keys()):
            log.warning("object not programmed: its namespace is over a per-tenant limit", extra={
                "object": f"{key[1]} {key[2]}/{key[3]}", "namespace": key[2], "error": over[key]})
        for ns in sorted({k[2] for k in before.keys() - over.keys()} - {k[2] for k in over}):
            log.info("namespace back under its per-tenant limits", extra={"namespace": ns})

    def _count(self, over: dict[ObjectKey, str]) -> None:
        if self._gauge is None:
            return
        counts: dict[tuple[str, str], int] = {}
        for key, why in over.items():
            limit = "routes" if "--max-routes-per-namespace" in why else "objects"
            counts[(key[2], limit)] = counts.get((key[2], limit), 0) + 1
        self._gauge.clear()
        for (ns, limit), n in counts.items():
            self._gauge.labels(namespace=ns, limit=limit).set(n)

