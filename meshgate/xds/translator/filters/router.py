"""`envoy.filters.http.router`: forwards the request to the route's cluster. Always last.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter
"""

from __future__ import annotations

from envoy.extensions.filters.http.router.v3 import router_pb2

from meshgate import ir

NAME = "envoy.filters.http.router"


def listener_config(listener: ir.Listener) -> router_pb2.Router:
    # At the edge, don't tell clients about upstream timings or Envoy internals (x-envoy-*
    # headers) unless the ClientTrafficPolicy asks for them.
    return router_pb2.Router(suppress_envoy_headers=not listener.settings.enable_envoy_headers)
