"""What a client reads when Envoy refuses a request on meshgate's authentication and
authorization filters (401, 403): a JSON body it can act on, instead of Envoy's one-line text.

    {"status": 401, "error": "unauthorized", "reason": "jwt_authn_access_denied{Jwt_is_missing}",
     "request_id": "..."}

`reason` is Envoy's response code details (which check refused, why; never a credential), and
`request_id` the id in the access log. Done by the connection manager's `local_reply_config`
(it rewrites only Envoy's own replies, never an upstream's 401/403); gRPC calls keep their
trailers-only status. Each auth filter module calls `add_json_denials` from its
`patch_connection_manager`; the mappers are added once per connection manager.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/local_reply
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import struct_pb2

from meshgate import ir

_RUNTIME_KEY = "meshgate.auth_denial_local_reply.{}"
_ERRORS = {401: "unauthorized", 403: "forbidden"}


def add_json_denials(listener: ir.Listener, hcm: hcm_pb2.HttpConnectionManager) -> None:
    del listener
    keys = {_RUNTIME_KEY.format(code) for code in _ERRORS}
    if any(f.status_code_filter.comparison.value.runtime_key in keys
           for m in hcm.local_reply_config.mappers for f in m.filter.and_filter.filters):
        return  # another auth filter of this chain added them already
    for code, error in _ERRORS.items():
        mapper = hcm.local_reply_config.mappers.add()
        both = mapper.filter.and_filter.filters
        both.add().status_code_filter.comparison.value.CopyFrom(
            base_pb2.RuntimeUInt32(default_value=code, runtime_key=_RUNTIME_KEY.format(code)))
        # Not gRPC (application/grpc*): a gRPC client reads the status from grpc-status.
        not_grpc = both.add().header_filter.header
        not_grpc.CopyFrom(rc.HeaderMatcher(name="content-type", invert_match=True, treat_missing_header_as_empty=True,
                                           string_match=string_pb2.StringMatcher(prefix="application/grpc")))
        body = struct_pb2.Struct()
        body.update({"status": code, "error": error, "reason": "%RESPONSE_CODE_DETAILS%",
                     "request_id": "%REQ(X-REQUEST-ID)%"})
        mapper.body_format_override.json_format.CopyFrom(body)
