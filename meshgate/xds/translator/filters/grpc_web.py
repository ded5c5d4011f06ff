"""`envoy.filters.http.grpc_web`: lets browsers call gRPC services. A gRPC-Web request (HTTP/1.1
or HTTP/2, `content-type: application/grpc-web[+proto]` or `-text` for base64 bodies) is turned
into a real gRPC request to the upstream, and the reply, trailers included, back into gRPC-Web
(whose trailers travel in the body, where browsers can read them).
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/grpc_web_filter

The filter touches only requests whose content type is gRPC-Web, so it would be harmless on every
listener; it is put only where a GRPCRoute is attached so that a listener without gRPC routes
keeps the shortest chain (and its config dump says what it does). GRPCRoute routes match any
`application/grpc*` content type (see `translate_route`), because Envoy picks the route before
this filter rewrites the content type to `application/grpc`.

Deadlines. When Envoy itself ends a call at its deadline (the route's
`max_stream_duration.grpc_timeout_header_max` honours the client's `grpc-timeout`), it sends a
*local reply*: HTTP 504 "downstream duration timeout". A native gRPC request gets it as gRPC,
`grpc-status: 4` (DEADLINE_EXCEEDED). A gRPC-Web request doesn't: whether a local reply is gRPC is
decided from the request's content type *before* this filter rewrote it, so the reply is plain
HTTP 504, which this filter then converts with the HTTP-to-gRPC table (504 -> 14 UNAVAILABLE). The
`local_reply_config` mapper below turns Envoy's 504s for `application/grpc*` requests into
bodiless "trailers-only" gRPC replies (HTTP 200, `grpc-status: 4`), which this filter passes
through unchanged (a headers-only reply that has `grpc-status` is already valid gRPC-Web).
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/local_reply
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.grpc_web.v3 import grpc_web_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import string_pb2

from meshgate import ir

NAME = "envoy.filters.http.grpc_web"


def listener_config(listener: ir.Listener) -> grpc_web_pb2.GrpcWeb | None:
    if not any(route.grpc for vhost in listener.virtual_hosts for route in vhost.routes):
        return None
    return grpc_web_pb2.GrpcWeb()


GRPC_DEADLINE_EXCEEDED = 4


def patch_connection_manager(listener: ir.Listener, hcm: hcm_pb2.HttpConnectionManager) -> None:
    # Which local replies: Envoy's own 504 (Gateway Timeout: a deadline or a route timeout ran out)
    # to a gRPC or gRPC-Web request. Native gRPC requests match too; for them it only turns a route
    # timeout's 14 UNAVAILABLE into 4 DEADLINE_EXCEEDED as well, so both kinds of client see one status.
    mapper = hcm.local_reply_config.mappers.add()
    both = mapper.filter.and_filter.filters
    both.add().status_code_filter.comparison.value.CopyFrom(
        base_pb2.RuntimeUInt32(default_value=504, runtime_key="meshgate.grpc_deadline_local_reply.status"))
    both.add().header_filter.header.CopyFrom(
        rc.HeaderMatcher(name="content-type", string_match=string_pb2.StringMatcher(prefix="application/grpc")))
    # Rewritten to a trailers-only gRPC reply: status 200, grpc-status and grpc-message headers, no
    # body (an empty body makes Envoy send the headers as the whole response).
    mapper.status_code.value = 200
    mapper.body.inline_string = ""
    for name, value in (("grpc-status", str(GRPC_DEADLINE_EXCEEDED)), ("grpc-message", "deadline exceeded: %RESPONSE_CODE_DETAILS%")):
        mapper.headers_to_add.add(header=base_pb2.HeaderValue(key=name, value=value),
                                  append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
