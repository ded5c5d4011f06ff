"""Kubernetes `v1 Service` and `discovery.k8s.io/v1 EndpointSlice`: what a route's backendRef to a
Service resolves to.

A Service names a set of pods and the ports they serve; the pods actually behind it at any moment
are listed in its EndpointSlices (several per Service on large ones), which Kubernetes keeps up to
date as pods start, become ready and terminate. meshgate reads only what routing needs: a
Service's ports (`port`, `name`, `appProtocol`) and its slices' endpoints with their readiness.
Every other field (clusterIP, selector, type-specific settings, status) is for kube-proxy and
other controllers, so it is accepted and ignored: a cluster's manifests load unchanged.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from meshgate.api.models import Model, Port, Resource

__all__ = ["SERVICE_KINDS", "SERVICE_NAME_LABEL", "EndpointSlice", "Service", "ServicePort"]

# The label that ties an EndpointSlice to its Service (set by Kubernetes' EndpointSlice controller).
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class _Lenient(Model):
    """Kubernetes' own kinds: the fields meshgate uses are checked, the others ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel, frozen=True)


class ServicePort(_Lenient):
    name: str | None = None  # required when a Service has more than one port
    port: Port
    target_port: int | str | None = None  # the pods' port, by number or by the name of a container port
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: str | None = None  # e.g. kubernetes.io/h2c: the upstream speaks HTTP/2 without TLS


class ServiceSpec(_Lenient):
    type: str = "ClusterIP"
    ports: list[ServicePort] = Field(default_factory=list, max_length=256)
    external_name: str | None = None


class Service(Resource):
    """v1 Service: a backendRef's target; its endpoints come from its EndpointSlices."""

    api_version: Literal["v1"]
    kind: Literal["Service"]
    spec: ServiceSpec = Field(default_factory=ServiceSpec)


class EndpointConditions(_Lenient):
    # Kubernetes: an unset `ready` means ready, an unset `serving` means the same as `ready`.
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class SliceEndpoint(_Lenient):
    addresses: list[str] = Field(min_length=1, max_length=100)  # fungible: consumers use the first
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)


class EndpointPort(_Lenient):
    name: str | None = None  # the Service port's name this port belongs to ("" / unset: the unnamed port)
    port: int | None = Field(None, ge=1, le=65535)  # the pods' actual port (a named targetPort resolved)
    protocol: str = "TCP"


class EndpointSlice(Resource):
    """discovery.k8s.io/v1 EndpointSlice: some of a Service's endpoints (label kubernetes.io/service-name)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel, frozen=True)
    api_version: Literal["discovery.k8s.io/v1"]
    kind: Literal["EndpointSlice"]
    address_type: Literal["IPv4", "IPv6", "FQDN"]
    endpoints: list[SliceEndpoint] | None = Field(default_factory=list, max_length=1000)
    ports: list[EndpointPort] | None = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _addresses(self) -> EndpointSlice:
        if self.address_type != "FQDN":
            version = 4 if self.address_type == "IPv4" else 6
            for endpoint in self.endpoints or ():
                for address in endpoint.addresses:
                    try:
                        ok = ipaddress.ip_address(address).version == version
                    except ValueError:
                        ok = False
                    if not ok:
                        raise ValueError(f"{address!r} is not an {self.address_type} address")
        if not self.metadata.labels.get(SERVICE_NAME_LABEL):
            raise ValueError(f"metadata.labels needs {SERVICE_NAME_LABEL}: the Service these endpoints belong to")
        return self

    @property
    def service_name(self) -> str:
        return self.metadata.labels[SERVICE_NAME_LABEL]


SERVICE_KINDS: dict[tuple[str, str], type[Resource]] = {
    ("v1", "Service"): Service,
    ("discovery.k8s.io/v1", "EndpointSlice"): EndpointSlice,
}
