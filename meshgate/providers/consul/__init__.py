"""The Consul provider: Backends whose endpoints are a Consul service's instances (`spec.consul`),
followed with blocking queries through `py-consul` and sent to Envoy as EDS alone
(docs/consul.md)."""

from meshgate.providers.consul.endpoints import CONDITION, DEFAULT_ADDRESS, ConsulEndpoints, normalize_address, read_token
from meshgate.providers.consul.watch import ConsulQuery, ServiceWatch, endpoints_of

__all__ = ["CONDITION", "DEFAULT_ADDRESS", "ConsulEndpoints", "ConsulQuery", "ServiceWatch", "endpoints_of",
           "normalize_address", "read_token"]
