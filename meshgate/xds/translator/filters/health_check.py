"""`envoy.filters.http.health_check`: Envoy answers a health-check path itself (ClientTrafficPolicy
`healthCheck.path`), 200 while serving and 503 once draining, without touching an upstream.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/health_check_filter
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.health_check.v3 import health_check_pb2
from envoy.type.matcher.v3 import string_pb2

from meshgate import ir

NAME = "envoy.filters.http.health_check"


def listener_config(listener: ir.Listener) -> health_check_pb2.HealthCheck | None:
    path = listener.settings.health_check_path
    if path is None:
        return None
    # pass_through_mode false: answer here instead of asking an upstream.
    config = health_check_pb2.HealthCheck()
    config.pass_through_mode.value = False
    config.headers.append(rc.HeaderMatcher(name=":path", string_match=string_pb2.StringMatcher(exact=path)))
    return config
