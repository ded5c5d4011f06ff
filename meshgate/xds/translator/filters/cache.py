"""`envoy.filters.http.cache`: HTTP caching (BackendTrafficPolicy `cache`, a meshgate
extension) in Envoy's memory, with the `simple_http_cache` store. Envoy marks both
work-in-progress. https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/cache_filter

Envoy applies RFC 9111: it stores responses whose Cache-Control/Expires give a freshness
lifetime (not `no-store`/`private`, statuses 200, 203, 204, 300, 301, 308, 404, 405, 410, 414,
451, 501), answers hits with an `age` header, validates stale entries upstream, and keys entries
by host, path and query; a response with `Vary` is never cached. The filter has no per-route settings of
its own: one instance per distinct setting, disabled by default, and routes with `cache` enable
theirs (a per-route `FilterConfig`).

Chain position: last before the router, as Envoy recommends (a hit skips every filter after it),
so authentication, rate limits and fault injection apply to hits as to misses.
"""

from __future__ import annotations

import hashlib

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.cache.v3 import cache_pb2
from envoy.extensions.http.cache.simple_http_cache.v3 import config_pb2 as simple_pb2
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from meshgate import ir
from meshgate.ir import shaping

NAME = "envoy.filters.http.cache"
DISABLED_BY_DEFAULT = True  # routes with `cache` enable their instance


def _instance_name(c: shaping.Cache) -> str:
    if c == shaping.Cache():
        return NAME
    return f"{NAME}.{hashlib.sha256(repr(c).encode()).hexdigest()[:8]}"  # stable: same settings, same name


def listener_filters(listener: ir.Listener) -> list[tuple[str, Message]]:
    found = {r.shaping.cache for v in listener.virtual_hosts for r in v.routes
             if r.shaping is not None and r.shaping.cache is not None}
    return [(_instance_name(c), _cache(c)) for c in sorted(found, key=_instance_name)]


def route_filters(route: ir.Route) -> list[tuple[str, Message]]:
    if route.shaping is None or route.shaping.cache is None:
        return []
    # Enabled with the listener's settings. Envoy refuses a FilterConfig without a config, and
    # the cache filter has no per-route message: an optional Empty, which Envoy skips (with a
    # "Can't find a registered implementation" warning at config load) while the FilterConfig
    # still enables the filter. (A CacheConfig here crashes Envoy 1.40 on the first request.)
    enable = rc.FilterConfig(is_optional=True)
    enable.config.Pack(empty_pb2.Empty(), deterministic=True)
    return [(_instance_name(route.shaping.cache), enable)]


def _cache(c: shaping.Cache) -> cache_pb2.CacheConfig:
    out = cache_pb2.CacheConfig()
    out.typed_config.Pack(simple_pb2.SimpleHttpCacheConfig(), deterministic=True)  # in memory, per Envoy
    # No allowed_vary_headers: a response with Vary is not cached (allowing any crashes Envoy 1.40).
    if c.max_body_bytes:
        out.max_body_bytes = c.max_body_bytes
    out.ignore_request_cache_control_header = c.ignore_request_cache_control
    return out


