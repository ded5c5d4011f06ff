"""Failover clusters (`meshgate.gatewayapi.failover`) in Envoy's terms: one
`LocalityLbEndpoints` per Backend, at priority 0 (primaries) or 1 (fallbacks).

Envoy picks a priority by the health of the ones before it (overprovisioning factor 1.4, the
default, as Envoy Gateway: priority 0 keeps all traffic while 72% or more of its endpoints are
healthy), then a locality within it by weight (`locality_weighted_lb_config`), then an endpoint.
https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/priority
"""

from __future__ import annotations

from collections import Counter

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from meshgate import ir


def set_cluster(out: cluster_pb2.Cluster, cluster: ir.Cluster) -> None:
    if any(n > 1 for n in Counter(l.priority for l in cluster.localities).values()):
        # Several Backends at one priority: shared by their backendRef weights (locality weights
        # are ignored without this).
        out.common_lb_config.locality_weighted_lb_config.SetInParent()


def add_localities(cla: endpoint_pb2.ClusterLoadAssignment, cluster: ir.Cluster, add_endpoints) -> None:  # noqa: ANN001
    for loc in cluster.localities:
        out = cla.endpoints.add(priority=loc.priority, locality=base_pb2.Locality(sub_zone=loc.name))
        out.load_balancing_weight.value = loc.weight
        add_endpoints(out, loc.endpoints)
