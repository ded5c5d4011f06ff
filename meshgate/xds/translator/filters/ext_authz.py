"""`envoy.filters.http.ext_authz`: request signatures (SecurityPolicy `requestSignature`, a
meshgate extension), checked per request by the edge companion (`meshgate edge`).

Envoy's ext_authz filter pauses each request, sends its method, path, headers and (buffered)
body to an authorization service over gRPC (`envoy.service.auth.v3.Authorization/Check`) and
forwards it only if the answer is OK; otherwise the service's denial (401 and a reason header)
is the response. This is per-request Python: slower than the Envoy-native checks
(docs/security.md).

The filter is in the chain *disabled by default* (`ExtAuthzPerRoute` decides per route): the
routes with a signature policy enable it with `check_settings.context_extensions` naming their
policy, which Envoy passes to the companion with the request, so it knows whose keys apply.
Settings Envoy only takes on the filter itself (failure mode, timeout, body buffering) make
one instance per distinct combination, `envoy.filters.http.ext_authz/<settings>`; each route
enables its own. No key is ever in Envoy's config: the companion gets them over ADS.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/ext_authz_filter
"""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import http_status_pb2

from meshgate import ir
from meshgate.edge.config import POLICY_KEY, ROUTE_KEY  # the context extensions the companion reads
from meshgate.edge.signing import KEY_ID_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from meshgate.gatewayapi.security import EDGE_COMPANION_CLUSTER

NAME = "envoy.filters.http.ext_authz"
DISABLED_BY_DEFAULT = True  # routes with requestSignature enable their instance
# Headers Envoy sends to the companion besides the signed ones: the scheme's, and the request id
# its logs carry. Sending only these keeps each CheckRequest small.
_ALWAYS_SENT = (KEY_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER, "x-request-id")
_RFC9421_SENT = ("signature-input", "signature", "content-digest")


def _settings(sig: ir.RequestSignature) -> tuple[bool, int, int]:
    return sig.failure_mode_allow, int(round(sig.timeout_s * 1000)), sig.max_body_bytes


def _name(sig: ir.RequestSignature) -> str:
    allow, timeout_ms, body = _settings(sig)
    return f"{NAME}/{'fail-open' if allow else 'fail-closed'}-{timeout_ms}ms-body{body}"


def listener_filters(listener: ir.Listener) -> list[tuple[str, ext_authz_pb2.ExtAuthz]]:
    found: dict[str, ir.RequestSignature] = {}
    headers: dict[str, set[str]] = {}
    for vhost in listener.virtual_hosts:
        for route in vhost.routes:
            sig = route.security.signature if route.security is not None else None
            if sig is not None:
                found.setdefault(_name(sig), sig)
                headers.setdefault(_name(sig), set()).update(sig.headers)
                if sig.scheme == "RFC9421":  # RFC 9421's two fields, and the body's digest (RFC 9530)
                    headers[_name(sig)].update(_RFC9421_SENT)
    return [(n, _config(found[n], headers[n])) for n in sorted(found)]


def route_filters(route: ir.Route) -> list[tuple[str, rc.FilterConfig]]:
    sig = route.security.signature if route.security is not None else None
    if sig is None:
        return []
    per_route = ext_authz_pb2.ExtAuthzPerRoute()
    per_route.check_settings.context_extensions[POLICY_KEY] = sig.policy
    per_route.check_settings.context_extensions[ROUTE_KEY] = route.name
    enable = rc.FilterConfig()
    enable.config.Pack(per_route, deterministic=True)
    return [(_name(sig), enable)]


def _config(sig: ir.RequestSignature, signed_headers: set[str]) -> ext_authz_pb2.ExtAuthz:
    allow, timeout_ms, body = _settings(sig)
    service = grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
        cluster_name=EDGE_COMPANION_CLUSTER))
    service.timeout.FromMilliseconds(timeout_ms)  # Envoy's default is 200 ms
    config = ext_authz_pb2.ExtAuthz(
        grpc_service=service,
        transport_api_version=config_source_pb2.V3,
        # Companion unreachable, or no answer in time: refuse (503, "try again") unless the
        # policy says let it through; then the upstream is told the request was not verified.
        failure_mode_allow=allow,
        failure_mode_allow_header_add=allow,
        status_on_error=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable),
        stat_prefix="signature",
    )
    # Only the headers the check needs (`host` is the CheckRequest's own field, always sent).
    names = sorted(set(_ALWAYS_SENT) | (signed_headers - {"host"}))
    config.allowed_headers.CopyFrom(string_pb2.ListStringMatcher(
        patterns=[string_pb2.StringMatcher(exact=n, ignore_case=True) for n in names]))
    if body:
        # Envoy buffers the body (up to this size; a larger one gets 413) and sends its exact
        # bytes (`raw_body`) for the digest.
        config.with_request_body.CopyFrom(ext_authz_pb2.BufferSettings(
            max_request_bytes=body, allow_partial_message=False, pack_as_bytes=True))
    return config
