"""`envoy.filters.http.grpc_json_transcoder`: serves a gRPC service as REST/JSON. A JSON request
matching a method's `google.api.http` binding (path and query parameters bound to request fields,
the body to the rest) becomes a gRPC call to the route's gRPC backend; the reply becomes JSON, and
a gRPC error an HTTP status (NOT_FOUND -> 404, PERMISSION_DENIED -> 403, ...) with, when
`convert_grpc_status`, a JSON `{"code", "message"}` body.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/grpc_json_transcoder_filter

In the chain of listeners that have a transcoding rule, *disabled by default* (`HttpFilter.disabled`):
only the routes of those rules enable it, with a per-route `FilterConfig` that carries their
transcoder's whole config (descriptor set included: a route's config can't depend on its
listener's, and Envoy keeps one copy per route). The listener-level config, which Envoy needs
even for a disabled filter, is the listener's first transcoder.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2

from meshgate import ir

NAME = "envoy.filters.http.grpc_json_transcoder"
DISABLED_BY_DEFAULT = True  # routes enable it (see translate_route's typed_per_filter_config)


def _first(listener: ir.Listener) -> ir.GrpcJsonTranscoding | None:
    found = [r.transcoding for v in listener.virtual_hosts for r in v.routes if r.transcoding is not None]
    return min(found, key=lambda t: t.name) if found else None


def listener_config(listener: ir.Listener) -> transcoder_pb2.GrpcJsonTranscoder | None:
    first = _first(listener)
    return transcoder_config(first) if first is not None else None


def transcoder_config(t: ir.GrpcJsonTranscoding) -> transcoder_pb2.GrpcJsonTranscoder:
    out = transcoder_pb2.GrpcJsonTranscoder(
        proto_descriptor_bin=t.descriptor_set,  # inline: the Envoy needn't see meshgate's files
        services=list(t.services),
        # Keep the route the JSON request matched: by default Envoy would route the transcoded
        # request again, by its new gRPC path, which this rule's match (the REST paths) doesn't cover.
        match_incoming_request_route=True,
        ignore_unknown_query_parameters=t.ignore_unknown_query_parameters,
        convert_grpc_status=t.convert_grpc_status,
    )
    # Refuse, rather than forward as plain HTTP to a gRPC upstream, a request no binding matches
    # (404) or with a query parameter that is no request field (400, unless ignored).
    out.request_validation_options.reject_unknown_method = True
    out.request_validation_options.reject_unknown_query_parameters = not t.ignore_unknown_query_parameters
    p = out.print_options
    p.add_whitespace = t.add_whitespace
    p.always_print_primitive_fields = t.always_print_primitive_fields
    p.always_print_enums_as_ints = t.always_print_enums_as_ints
    p.preserve_proto_field_names = t.preserve_proto_field_names
    return out


def route_config(route: ir.Route) -> rc.FilterConfig | None:
    if route.transcoding is None:
        return None  # stays disabled on this route
    enable = rc.FilterConfig()  # enables the disabled-by-default filter, with this config
    enable.config.Pack(transcoder_config(route.transcoding), deterministic=True)
    return enable
