"""`envoy.filters.http.api_key_auth`: API keys (SecurityPolicy `apiKeyAuth`).

In the chain of listeners that have such routes, *disabled by default*; each of those routes
enables it with its own keys and key sources (a per-route `FilterConfig`). A request without a
known key gets 401 from Envoy; the client id of the key can be forwarded to the upstream, and
the key removed. The keys travel inline in the
route configuration (the filter has no SDS), so `meshgate translate` redacts them.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/api_key_auth_filter
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.api_key_auth.v3 import api_key_auth_pb2

from meshgate import ir
from meshgate.xds.translator.filters.denials import add_json_denials

NAME = "envoy.filters.http.api_key_auth"
# Its 401/403 replies carry a JSON body (reason, request id): see denials.py.
patch_connection_manager = add_json_denials
DISABLED_BY_DEFAULT = True  # routes with apiKeyAuth enable it


def listener_config(listener: ir.Listener) -> api_key_auth_pb2.ApiKeyAuth | None:
    for vhost in listener.virtual_hosts:
        for route in vhost.routes:
            if route.security is not None and route.security.api_key is not None:
                return api_key_auth_pb2.ApiKeyAuth()  # all settings are per route
    return None


def route_config(route: ir.Route) -> rc.FilterConfig | None:
    if route.security is None or route.security.api_key is None:
        return None
    auth = route.security.api_key
    config = api_key_auth_pb2.ApiKeyAuthPerRoute()
    for client, key in auth.credentials:
        config.credentials.add(key=key, client=client)
    for kind, name in auth.sources:
        config.key_sources.add(**{kind: name})
    if auth.forward_client_id_header or auth.sanitize:
        config.forwarding.header = auth.forward_client_id_header or ""
        config.forwarding.hide_credentials = auth.sanitize
    enable = rc.FilterConfig()
    enable.config.Pack(config, deterministic=True)
    return enable
