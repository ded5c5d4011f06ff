"""Priority failover (Envoy Gateway's Backend `fallback: true`) → IR.

A rule whose backendRefs include a fallback Backend gets one **failover cluster** instead of one
cluster per Backend: each Backend's endpoints become a locality of that cluster, the primaries at
Envoy priority 0 and the fallbacks at priority 1 (locality weight = the backendRef's weight).
Envoy sends priority 1 traffic only as priority 0 loses health (with the default
overprovisioning factor 1.4: from under 72% healthy primaries, all of it at 0%), and moves back
as the primaries recover. Health comes from the cluster's health checks (BackendTrafficPolicy
`healthCheck` on the rule: a variant of the failover cluster, as of any other).
https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/priority

One Envoy cluster has one protocol, one transport socket (TLS) and one load balancer, so the
Backends of a failover rule must agree on them; meshgate Backends only (a Service's endpoints
come from elsewhere, by EDS).

The cluster is named from its members (`backend/<ns>/<first primary>/failover-<hash>`), so that
rules with the same backendRefs share it, and its members travel in the IR route's destination (`ir.Destination.failover`): the
translator builds the clusters from the routes, memoized ones included (`clusters`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from meshgate import ir
from meshgate.gatewayapi.routes import _is_ip, cluster_name
from meshgate.gatewayapi.status import Condition

class FailoverResolver:
    """Builds a rule's failover destination, with `ResolvedRefs=False` on the route when its
    Backends can't share a cluster (the rule then answers 500, never a silent non-failover)."""

    def __init__(self, translator: Any) -> None:
        self.t = translator

    def __call__(self, route: Any, r: int, resolved: list[tuple[int, Any, Any]]) -> list[ir.Destination] | None:
        """`resolved`: (backendRef index, ref, Backend or None) of the rule's non-zero-weight refs.
        None when no Backend is a fallback (ordinary weighted clusters)."""
        backends = [(b, ref, be) for b, ref, be in resolved if be is not None]
        if not any(getattr(getattr(be, "spec", None), "fallback", None) for _, _, be in backends):
            return None
        where = ("spec", "rules", r, "backendRefs")

        def refuse(message: str, b: int) -> list[ir.Destination]:
            self.t.status.condition(route, Condition("ResolvedRefs", "False", "InvalidFallback", message), (*where, b))
            return [ir.Destination(None, 1)]

        services = [b for b, _, be in backends if getattr(be, "cluster", None) is not None]
        if services:
            return refuse("a rule with a fallback Backend can only use meshgate.io Backends (a Service's endpoints "
                          "can't join a failover cluster)", services[0])
        consul = [b for b, _, be in backends if getattr(be.spec, "consul", None) is not None]
        if consul:  # their endpoints arrive as EDS for the Backend's own cluster only (docs/consul.md)
            return refuse("a rule with a fallback Backend can't use a Backend with spec.consul yet (a Consul "
                          "service's endpoints can't join a failover cluster)", consul[0])
        primaries = [x for x in backends if not x[2].spec.fallback]
        if not primaries:
            return refuse("every Backend of this rule is a fallback: at least one must be primary (no fallback: true)",
                          backends[0][0])
        first = primaries[0][2].spec
        for b, ref, be in backends:
            s = be.spec
            for what, mine, theirs in (("protocol", s.protocol, first.protocol),
                                       ("loadBalancer.type", s.load_balancer.type, first.load_balancer.type),
                                       ("tls", _tls(s), _tls(first)),
                                       ("endpoint kind (IP or DNS name)", _dns(s), _dns(first))):
                if mine != theirs:
                    return refuse(f"Backend {be.metadata.namespace}/{be.metadata.name} differs in {what} from the rule's "
                                  f"first primary Backend: the Backends of a failover rule share one Envoy cluster", b)
        members = tuple(ir.FailoverMember(cluster_name(be), ref.weight, 1 if be.spec.fallback else 0)
                        for _, ref, be in backends)
        digest = hashlib.sha256(repr(members).encode()).hexdigest()[:10]
        name = f"{cluster_name(primaries[0][2])}/failover-{digest}"  # named after the first primary, for stats
        out = [ir.Destination(name, sum(m.weight for m in members if m.priority == 0), failover=members)]
        # An unresolved backendRef keeps its share of 500s, as without failover.
        out += [ir.Destination(None, ref.weight) for _, ref, be in resolved if be is None]
        return out


def _tls(spec: Any) -> Any:
    return spec.tls.model_dump() if spec.tls is not None else None


def _dns(spec: Any) -> bool:
    return any(not _is_ip(e.address) for e in spec.endpoints)


def clusters(routes: Iterable[ir.Route], bases: tuple[ir.Cluster, ...]) -> tuple[ir.Cluster, ...]:
    """The failover clusters the routes use, built from their members' own clusters (endpoints,
    protocol, TLS as resolved). A member whose cluster is left out (e.g. its TLS can't be
    resolved) is left out of the failover cluster too."""
    wanted: dict[str, tuple[ir.FailoverMember, ...]] = {}
    for route in routes:
        for d in route.destinations:
            if d.failover:
                wanted.setdefault(d.cluster, d.failover)
    by_name = {c.name: c for c in bases}
    out = []
    for name in sorted(wanted):
        members = [(m, by_name[m.cluster]) for m in wanted[name] if m.cluster in by_name]
        primary = next((c for m, c in members if m.priority == 0), None)
        if primary is None:
            continue  # no primary left: the route's cluster is missing and Envoy answers 503
        localities = tuple(ir.Locality(m.cluster, m.priority, m.weight, c.endpoints) for m, c in members)
        out.append(replace(primary, name=name, endpoints=(), localities=localities, settings=None, backend=None))
    return tuple(out)
