"""Global rate limits (BackendTrafficPolicy `rateLimit.global`, resolved per route by
meshgate.gatewayapi.shaping) need the edge companion: Envoy asks it per request (mode Exact) or
gets its budgets from it (mode Budget). This adds the companion's cluster when some route has one
and the request-signature policies have not already added it."""

from __future__ import annotations

from collections.abc import Iterable

from meshgate import ir
from meshgate.gatewayapi.security import EDGE_COMPANION_CLUSTER, edge_companion_cluster


def has_global_limits(listeners: Iterable[ir.Listener]) -> bool:
    return any(route.shaping is not None and route.shaping.global_rate_limit is not None
               for listener in listeners for vhost in listener.virtual_hosts for route in vhost.routes)


def clusters(listeners: Iterable[ir.Listener], present: Iterable[ir.Cluster]) -> tuple[ir.Cluster, ...]:
    if has_global_limits(listeners) and all(c.name != EDGE_COMPANION_CLUSTER for c in present):
        return (edge_companion_cluster(),)
    return ()
