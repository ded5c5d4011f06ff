"""`envoy.filters.http.cors`: cross-origin resource sharing (Gateway API's HTTPRoute `CORS` filter).

The filter sits in the chain of a listener only when one of its routes has a CORS policy; each
such route carries its policy as per-route config. Envoy answers preflight requests (OPTIONS with
`Origin` and `Access-Control-Request-Method`) itself, without the upstream, and adds the
`Access-Control-*` headers to responses for allowed origins (echoing the request's origin).
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/cors_filter
"""

from __future__ import annotations

from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from meshgate import ir

NAME = "envoy.filters.http.cors"


def listener_config(listener: ir.Listener) -> cors_pb2.Cors | None:
    if any(route.cors is not None for vhost in listener.virtual_hosts for route in vhost.routes):
        return cors_pb2.Cors()  # all settings are per route
    return None


def route_config(route: ir.Route) -> cors_pb2.CorsPolicy | None:
    cors = route.cors
    if cors is None:
        return None
    out = cors_pb2.CorsPolicy(
        allow_methods=",".join(cors.methods),
        allow_headers=",".join(cors.headers),
        expose_headers=",".join(cors.expose),
        max_age=str(cors.max_age_s),
    )
    out.allow_credentials.value = cors.credentials
    # A preflight from an origin that isn't allowed is answered here too (with no CORS headers,
    # so the browser refuses the real request), instead of reaching an upstream that doesn't
    # expect OPTIONS.
    out.forward_not_matching_preflights.value = False
    for kind, value in cors.origins:
        if kind == "exact":
            # Scheme and host are case-insensitive (RFC 6454).
            out.allow_origin_string_match.append(string_pb2.StringMatcher(exact=value, ignore_case=True))
        else:
            out.allow_origin_string_match.append(
                string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=value)))
    return out
