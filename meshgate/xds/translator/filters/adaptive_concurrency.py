"""`envoy.filters.http.adaptive_concurrency`: a concurrency limit that follows the backend's
latency (BackendTrafficPolicy `adaptiveConcurrency`, a meshgate extension).
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/adaptive_concurrency_filter

Envoy's gradient controller keeps the number of requests in flight near what the backend serves
at its ideal latency (minRTT, measured every `interval` with only `minConcurrency` requests let
through, or given as `fixedValue`): every `concurrencyUpdateInterval` it compares the sampled
latency percentile with minRTT and shrinks or grows the limit; a request over it is answered at
once (503 by default, `x-envoy-overloaded`-free, body "reached concurrency limit") instead of
queueing in the backend. One controller lives in each filter instance, so there is one instance
per backend (the route's set of clusters) and setting, *disabled by default* in the listener and
enabled by the routes that go there: routes to one backend share its limit, other routes are not
limited. The filter has no stat prefix of its own: every instance of a listener counts into
`http.<listener>.adaptive_concurrency.gradient_controller.*` (`rq_blocked`, and the
`concurrency_limit` / `min_rtt_msecs` gauges of the instance that updated last).

Chain position: after the cache and the fault filter, just before the router, so the controller
sees only requests that reach the backend: cache hits, injected faults and requests refused by
authentication or rate limits neither take a slot nor skew the sampled latency.
"""

from __future__ import annotations

import hashlib

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.adaptive_concurrency.v3 import adaptive_concurrency_pb2 as ac
from google.protobuf import duration_pb2

from meshgate import ir
from meshgate.ir.shaping import AdaptiveConcurrency

NAME = "envoy.filters.http.adaptive_concurrency"
DISABLED_BY_DEFAULT = True  # the routes to each backend enable their instance


def _settings(route: ir.Route) -> AdaptiveConcurrency | None:
    return route.shaping.adaptive_concurrency if route.shaping is not None else None


def _name(route: ir.Route, settings: AdaptiveConcurrency) -> str:
    """The instance of this route's backend and settings: a short stable digest of both."""
    clusters = sorted({d.cluster or "" for d in route.destinations})
    digest = hashlib.sha256(repr((clusters, settings)).encode()).hexdigest()[:12]
    return f"{NAME}/{digest}"


def listener_filters(listener: ir.Listener) -> list[tuple[str, ac.AdaptiveConcurrency]]:
    found: dict[str, AdaptiveConcurrency] = {}
    for vhost in listener.virtual_hosts:
        for route in vhost.routes:
            settings = _settings(route)
            if settings is not None and route.destinations:
                found.setdefault(_name(route, settings), settings)
    return [(name, _config(found[name])) for name in sorted(found)]


def route_filters(route: ir.Route) -> list[tuple[str, rc.FilterConfig]]:
    settings = _settings(route)
    if settings is None or not route.destinations:  # a redirect or a direct reply reaches no backend
        return []
    enable = rc.FilterConfig()
    enable.config.SetInParent()  # an empty config: just "on here" (the settings live in the chain)
    return [(_name(route, settings), enable)]


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(round(seconds * 1e9)))
    return out


def _config(s: AdaptiveConcurrency) -> ac.AdaptiveConcurrency:
    gradient = ac.GradientControllerConfig()
    if s.percentile is not None:
        gradient.sample_aggregate_percentile.value = s.percentile
    limits = gradient.concurrency_limit_params
    limits.concurrency_update_interval.CopyFrom(_duration(s.update_interval_s or 0.1))  # required by Envoy
    if s.max_limit is not None:
        limits.max_concurrency_limit.value = s.max_limit
    rtt = gradient.min_rtt_calc_params
    rtt.SetInParent()  # required by Envoy, even empty
    if s.min_rtt_fixed_s is not None:
        rtt.fixed_value.CopyFrom(_duration(s.min_rtt_fixed_s))
    elif s.min_rtt_interval_s is not None:
        rtt.interval.CopyFrom(_duration(s.min_rtt_interval_s))
    if s.request_count is not None:
        rtt.request_count.value = s.request_count
    if s.jitter_percent is not None:
        rtt.jitter.value = s.jitter_percent
    if s.min_concurrency is not None:
        rtt.min_concurrency.value = s.min_concurrency
    if s.buffer_percent is not None:
        rtt.buffer.value = s.buffer_percent
    out = ac.AdaptiveConcurrency(gradient_controller_config=gradient)
    if s.exceeded_status is not None:
        out.concurrency_limit_exceeded_status.code = s.exceeded_status
    return out
