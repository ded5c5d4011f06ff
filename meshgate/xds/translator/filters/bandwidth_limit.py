"""`envoy.filters.http.bandwidth_limit`: body bytes per second of a route's requests and
responses (BackendTrafficPolicy `bandwidthLimit`, Envoy Gateway's field).
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/bandwidth_limit_filter

One filter instance limits one rate in one or both directions, so there are two instances,
`.request` and `.response`, each off in the listener (enable mode DISABLED) and set per route:
a token bucket per route (and Envoy worker), refilled every 50 ms, shared by the route's
concurrent streams. Stats: the listener's `http_bandwidth_limit` counters under the stat prefixes
`bandwidth_request` / `bandwidth_response` (`response_enforced`, `*_pending`, `*_allowed_size`...).

Chain position: after authentication and rate limits (refused requests are not slowed down) and
before the cache, so that cache hits are limited too.
"""

from __future__ import annotations

from envoy.extensions.filters.http.bandwidth_limit.v3 import bandwidth_limit_pb2 as bw
from google.protobuf.message import Message

from meshgate import ir

NAME = "envoy.filters.http.bandwidth_limit"
_DIRECTIONS = (("request", bw.BandwidthLimit.REQUEST), ("response", bw.BandwidthLimit.RESPONSE))


def _limited(route: ir.Route, direction: str) -> int | None:
    b = route.shaping.bandwidth if route.shaping is not None else None
    return None if b is None else getattr(b, f"{direction}_kib")


def listener_filters(listener: ir.Listener) -> list[tuple[str, Message]]:
    out = []
    for direction, _ in _DIRECTIONS:
        if any(_limited(r, direction) for v in listener.virtual_hosts for r in v.routes):
            # Off here (enable_mode DISABLED, the default): routes bring their limits.
            out.append((f"{NAME}.{direction}", bw.BandwidthLimit(stat_prefix=f"bandwidth_{direction}")))
    return out


def route_filters(route: ir.Route) -> list[tuple[str, Message]]:
    out = []
    for direction, mode in _DIRECTIONS:
        kib = _limited(route, direction)
        if not kib:
            continue
        config = bw.BandwidthLimit(stat_prefix=f"bandwidth_{direction}", enable_mode=mode)
        config.limit_kbps.value = kib  # Envoy's "kbps" are KiB per second
        b = route.shaping.bandwidth
        if b.trailers and direction == "response":
            config.enable_response_trailers = True
            config.response_trailer_prefix = b.trailer_prefix
        out.append((f"{NAME}.{direction}", config))
    return out
