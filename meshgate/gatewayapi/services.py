"""backendRefs to Kubernetes Services → clusters whose endpoints are the Service's ready pods.

A route's backendRef `{kind: Service, name, port}` (Gateway API's default kind) names one port of
a Service. It becomes one Envoy cluster per (Service, port), `service/NAMESPACE/NAME/PORT`, whose
endpoints are read from the Service's EndpointSlices:

- an EndpointSlice port belongs to the Service port with the same `name`, and its number is the
  pods' real port: a numeric or a named `targetPort`, already resolved by Kubernetes (it may
  differ between slices when pods name their container port differently);
- ready endpoints serve; endpoints that are terminating but still serving are sent as DRAINING
  (Envoy gives them no new requests while others are healthy); not-ready ones are left out.

The same code serves both providers: with files, `EndpointSlice` documents are read from the
store; with the Kubernetes provider, slices never enter the store: the provider computes the
same endpoints (`service_endpoints`) and sends them on the EDS-only path, so a pod coming or going
re-translates nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meshgate import ir
from meshgate.api.models import Backend, BackendSpec, LoadBalancer
from meshgate.api.service import EndpointSlice, Service, ServicePort

__all__ = ["ServiceBackend", "ServiceIndex", "service_cluster_name", "service_endpoints"]

SERVICE_CLUSTER_PREFIX = "service/"
# Gateway API's appProtocol values for HTTP/2 without TLS (GEP-1911), and gRPC's usual ones.
_HTTP2_APP_PROTOCOLS = {"kubernetes.io/h2c", "h2c", "http2", "grpc"}


def service_cluster_name(namespace: str, name: str, port: int) -> str:
    """The Envoy cluster (and ClusterLoadAssignment) name of one port of a Service."""
    return f"{SERVICE_CLUSTER_PREFIX}{namespace}/{name}/{port}"


class ServiceBackend(Backend):
    """A Service port resolved for a route, shaped as a Backend so that routes, mirrors and
    policies use it as one; `cluster` is its own cluster name (`routes.cluster_name` uses it)."""

    cluster: str


def _same_port_name(a: str | None, b: str | None) -> bool:
    return (a or "") == (b or "")


def service_endpoints(service: Service, slices: Iterable[EndpointSlice], port: ServicePort) -> tuple[ir.Endpoint, ...]:
    """The endpoints of one Service port, from its EndpointSlices (see the module doc), sorted."""
    found: dict[tuple[str, int], ir.Endpoint] = {}
    for slice_ in slices:
        if slice_.address_type == "FQDN":
            continue  # names would need a DNS cluster, not EDS
        numbers = [p.port for p in slice_.ports or () if _same_port_name(p.name, port.name)
                   and p.port is not None and p.protocol == port.protocol]
        if not numbers:
            continue
        for endpoint in slice_.endpoints or ():
            c = endpoint.conditions
            ready = c.ready is not False
            serving = c.serving if c.serving is not None else ready
            if ready and not c.terminating:
                draining = False
            elif serving and c.terminating:
                draining = True
            else:
                continue  # not ready: starting, failing its readiness probe, or gone
            address = endpoint.addresses[0]
            for number in numbers:
                key = (address, number)
                previous = found.get(key)
                # The same pod in two slices (a slice being replaced): healthy wins over draining.
                if previous is None or (previous.draining and not draining):
                    found[key] = ir.Endpoint(address, number, 1, draining)
    return tuple(found[k] for k in sorted(found))


def service_clusters_endpoints(service: Service, slices: Iterable[EndpointSlice]) -> dict[str, tuple[ir.Endpoint, ...]]:
    """Cluster name -> endpoints, for every TCP port of a Service."""
    slices = list(slices)
    ns, name = service.metadata.namespace, service.metadata.name
    return {service_cluster_name(ns, name, p.port): service_endpoints(service, slices, p)
            for p in service.spec.ports if p.protocol == "TCP"}


class ServiceIndex:
    """The Services and EndpointSlices of one translation, and the Service clusters routes use."""

    def __init__(self) -> None:
        self.services: dict[tuple[str, str], Service] = {}
        self.slices: dict[tuple[str, str], list[EndpointSlice]] = {}
        self.used: dict[str, bool] = {}  # cluster name -> used by a gRPC route (HTTP/2 needed)

    def add(self, resource: Service | EndpointSlice) -> None:
        if isinstance(resource, Service):
            self.services[(resource.metadata.namespace, resource.metadata.name)] = resource
        else:
            self.slices.setdefault((resource.metadata.namespace, resource.service_name), []).append(resource)

    def resolve(self, t: Any, route: Any, ref: Any, ns: str, where: tuple, unresolved: Any) -> ServiceBackend | None:
        """The Service port a backendRef names, as a `ServiceBackend`, or None with
        `ResolvedRefs=False` on the route (through `unresolved`) saying why."""
        service = self.services.get((ns, ref.name))
        if service is None:
            unresolved("BackendNotFound", t._missing("", "Service", ns, ref.name), (*where, "name"))
            return None
        if ns != route.metadata.namespace and not t.granted(route, "", "Service", ns, ref.name):
            unresolved("RefNotPermitted", f"Service {ns}/{ref.name} is in another namespace and no ReferenceGrant "
                       "allows it", (*where, "namespace"))
            return None
        if service.spec.type == "ExternalName":
            unresolved("UnsupportedValue", f"Service {ns}/{ref.name} is of type ExternalName, which meshgate doesn't "
                       "support yet (use a meshgate.io Backend with a DNS endpoint)", (*where, "name"))
            return None
        if ref.port is None:
            unresolved("UnsupportedValue", f"a backendRef to Service {ns}/{ref.name} needs a port", where)
            return None
        port = next((p for p in service.spec.ports if p.port == ref.port and p.protocol == "TCP"), None)
        if port is None:
            ports = ", ".join(str(p.port) for p in service.spec.ports if p.protocol == "TCP") or "none"
            unresolved("BackendNotFound", f"Service {ns}/{ref.name} has no TCP port {ref.port} (its ports: {ports})",
                       (*where, "port"))
            return None
        protocol = "HTTP2" if (port.app_protocol or "").lower() in _HTTP2_APP_PROTOCOLS else "HTTP1"
        spec = BackendSpec.model_construct(endpoints=[], protocol=protocol, load_balancer=LoadBalancer(),
                                           connect_timeout="5s", tls=None)
        return ServiceBackend.model_construct(api_version="meshgate.io/v1alpha1", kind="Backend",
                                              metadata=service.metadata, spec=spec,
                                              cluster=service_cluster_name(ns, ref.name, ref.port))

    def use(self, built: Iterable[tuple[Any, ir.Route]]) -> None:
        """Note the Service clusters a route's IR routes send to (memoized routes included)."""
        for _, route in built:
            for destination in route.destinations:
                if destination.cluster is not None and destination.cluster.startswith(SERVICE_CLUSTER_PREFIX):
                    self.used[destination.cluster] = self.used.get(destination.cluster, False) or route.grpc
            for mirror in route.mirrors:
                if mirror.cluster.startswith(SERVICE_CLUSTER_PREFIX):
                    self.used.setdefault(mirror.cluster, False)

    def clusters(self) -> tuple[ir.Cluster, ...]:
        """One cluster per Service port in use. Endpoints come from the EndpointSlices in the store
        (files); the Kubernetes provider sets them from outside (see the module doc)."""
        out = []
        for name in sorted(self.used):
            ns, svc, number = name[len(SERVICE_CLUSTER_PREFIX):].split("/")
            service = self.services.get((ns, svc))
            port = next((p for p in service.spec.ports if p.port == int(number)), None) if service else None
            if port is None:
                continue
            app = (port.app_protocol or "").lower() in _HTTP2_APP_PROTOCOLS
            # A GRPCRoute's backend speaks gRPC, i.e. HTTP/2 (Gateway API assumes h2c for it).
            protocol = "GRPC" if self.used[name] else "HTTP2" if app else "HTTP1"
            out.append(ir.Cluster(name=name, endpoints=service_endpoints(service, self.slices.get((ns, svc), ()), port),
                                  lb="RoundRobin", protocol=protocol, connect_timeout_s=5.0, dns=False))
        return tuple(out)
