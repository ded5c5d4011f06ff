"""`envoy.filters.http.basic_auth`: HTTP basic authentication (SecurityPolicy `basicAuth`).

In the chain of listeners that have such routes, *disabled by default*; each of those routes
enables it with its own users (htpasswd lines with SHA hashes, the only kind Envoy supports). A
request without valid credentials gets 401 from Envoy. The users travel inline in the route
configuration (the filter has no SDS), so `meshgate translate` redacts them.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/basic_auth_filter
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.basic_auth.v3 import basic_auth_pb2

from meshgate import ir
from meshgate.xds.translator.filters.denials import add_json_denials

NAME = "envoy.filters.http.basic_auth"
# Its 401/403 replies carry a JSON body (reason, request id): see denials.py.
patch_connection_manager = add_json_denials
DISABLED_BY_DEFAULT = True  # routes with basicAuth enable it
# The listener-level config must name users even though every route brings its own: a user no
# password hashes to (the SHA-1 of nothing a client can send is still a hash, so: an empty hash
# is refused by Envoy; use a fixed unusable one).
_NOBODY = "meshgate-nobody:{SHA}AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"


def listener_config(listener: ir.Listener) -> basic_auth_pb2.BasicAuth | None:
    for vhost in listener.virtual_hosts:
        for route in vhost.routes:
            if route.security is not None and route.security.basic is not None:
                config = basic_auth_pb2.BasicAuth()
                config.users.inline_string = _NOBODY
                return config
    return None


def route_config(route: ir.Route) -> rc.FilterConfig | None:
    if route.security is None or route.security.basic is None:
        return None
    config = basic_auth_pb2.BasicAuthPerRoute()
    config.users.inline_string = route.security.basic.htpasswd
    enable = rc.FilterConfig()
    enable.config.Pack(config, deterministic=True)
    return enable
