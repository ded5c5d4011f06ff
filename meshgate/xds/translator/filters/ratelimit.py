"""`envoy.filters.http.ratelimit`: global rate limits counted exactly, per request (BackendTrafficPolicy
`rateLimit.global`, `mode: Exact`, the default), by the edge companion's rate-limit service.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rate_limit_filter

For each request of a limited route Envoy builds one *descriptor* per rule from the request (the
route's `rate_limits` actions, in its per-route `RateLimitPerRoute`) and asks the companion
(`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, domain `meshgate`) before it goes
on. The companion counts it in Redis (fixed windows, meshgate.edge.ratelimit) and answers OK or
OVER_LIMIT; Envoy answers OVER_LIMIT with 429, `x-envoy-ratelimited`, the draft-03
`x-ratelimit-limit` / `-remaining` / `-reset` headers (from the companion's statuses) and the
companion's `retry-after`. This is per-request Python: about 0.06x plain Envoy's throughput at
best, so it is for exact limits at low rates (docs/traffic.md).

Descriptors: the first entry is `("rule", "<route name>#<rule index>")`, which names the rule
(and so its limit, which reaches the companion over ADS, meshgate.edge.config); the others come
from the rule's client selectors exactly as for local limits (meshgate.xds.translator.filters.
local_ratelimit: a header's value for Distinct, "match" for a header or method match, the client
address masked to the CIDR's prefix, the client address for a Distinct CIDR). A request for which
an action yields nothing (a header is missing, a match fails) is not counted by that rule.

Failure mode and timeout are settings of the filter itself, so there is one instance per
distinct pair (`envoy.filters.http.ratelimit/fail-open-100ms`); a route's per-route config
belongs to its own instance, and an instance on a route with no descriptors sends nothing.
"""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.config.ratelimit.v3 import rls_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.type.v3 import http_status_pb2

from meshgate import ir
from meshgate.gatewayapi.security import EDGE_COMPANION_CLUSTER
from meshgate.ir import shaping
from meshgate.xds.translator.filters import local_ratelimit

NAME = "envoy.filters.http.ratelimit"
DOMAIN = "meshgate"  # the rate-limit domain of every meshgate descriptor
RULE_KEY = "rule"  # the first entry of each descriptor: which rule (and limit) it is
STAT_PREFIX = "global_rate_limit"  # stats: cluster.<cluster>.global_rate_limit.ok / over_limit / error


def limits(route: ir.Route, mode: str = "Exact") -> shaping.GlobalRateLimit | None:
    g = route.shaping.global_rate_limit if route.shaping is not None else None
    return g if g is not None and g.mode == mode else None


def rule_id(route: ir.Route, index: int) -> str:
    return f"{route.name}#{index}"


def rule_descriptor(route: ir.Route, index: int, rule: shaping.RateLimitRule
                    ) -> tuple[rc.RateLimit, tuple[tuple[str, str | None], ...]]:
    """The actions that build rule `index`'s descriptor from a request, and the entries the
    descriptor must have to count: (key, value), value None for "any value, each its own count"."""
    actions = rc.RateLimit()
    expected = ratelimit_pb2.LocalRateLimitDescriptor()
    actions.actions.add().generic_key.CopyFrom(
        rc.RateLimit.Action.GenericKey(descriptor_key=RULE_KEY, descriptor_value=rule_id(route, index)))
    expected.entries.add(key=RULE_KEY, value=rule_id(route, index))
    for j, condition in enumerate(rule.conditions):
        local_ratelimit._condition(actions, expected, f"{RULE_KEY}-{j}", condition)
    return actions, tuple((e.key, e.value or None) for e in expected.entries)


def _name(g: shaping.GlobalRateLimit) -> str:
    return f"{NAME}/{'fail-closed' if g.fail_closed else 'fail-open'}-{int(round(g.timeout_s * 1000))}ms"


def listener_filters(listener: ir.Listener) -> list[tuple[str, rate_limit_pb2.RateLimit]]:
    found: dict[str, shaping.GlobalRateLimit] = {}
    for vhost in listener.virtual_hosts:
        for route in vhost.routes:
            g = limits(route)
            if g is not None:
                found.setdefault(_name(g), g)
    return [(n, _config(found[n])) for n in sorted(found)]


def route_filters(route: ir.Route) -> list[tuple[str, rate_limit_pb2.RateLimitPerRoute]]:
    g = limits(route)
    if g is None:
        return []
    per_route = rate_limit_pb2.RateLimitPerRoute(domain=DOMAIN)
    for i, rule in enumerate(g.rules):
        per_route.rate_limits.append(rule_descriptor(route, i, rule)[0])
    return [(_name(g), per_route)]


def _config(g: shaping.GlobalRateLimit) -> rate_limit_pb2.RateLimit:
    service = grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
        cluster_name=EDGE_COMPANION_CLUSTER))
    config = rate_limit_pb2.RateLimit(
        domain=DOMAIN,
        stat_prefix=STAT_PREFIX,
        rate_limit_service=rls_pb2.RateLimitServiceConfig(grpc_service=service,
                                                          transport_api_version=config_source_pb2.V3),
        # No answer in time, or an error: let through (Envoy's default) or refuse with 503.
        failure_mode_deny=g.fail_closed,
        status_on_error=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable),
        enable_x_ratelimit_headers=rate_limit_pb2.RateLimit.DRAFT_VERSION_03,
    )
    config.timeout.FromMilliseconds(int(round(g.timeout_s * 1000)))
    return config
