"""Distributed tracing: Envoy's OpenTelemetry tracer, exporting spans over OTLP/gRPC.

When tracing is on, every listener's HTTP connection manager gets a `tracing` block whose
provider is `envoy.tracers.opentelemetry`: Envoy starts (or continues, from an incoming W3C
`traceparent`) a trace per sampled request, writes `traceparent` on the request it sends
upstream, and exports one server span per request to the OTLP collector through the cluster
`meshgate/otlp` that this module adds to CDS. The request path never reaches Python.

It is switched on by the OpenTelemetry SDK's own environment variables (a meshgate extension:
Envoy Gateway configures this in its EnvoyProxy kind, `spec.telemetry.tracing`, which meshgate
doesn't have), read by `meshgate run` and `meshgate xds`:

- `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`: `http://HOST:PORT`
  of an OTLP gRPC receiver (collector, Jaeger, Tempo); unset = no tracing;
- `OTEL_TRACES_SAMPLER_ARG`: the share of requests traced, 0 to 1 (default 1);
- `OTEL_SERVICE_NAME`: the `service.name` resource attribute (default `meshgate`);
- `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` must be `grpc` if set; `OTEL_TRACES_EXPORTER=none` is off.

Redaction: Envoy tags each span with `http.url`, which carries the query string (tokens, API
keys); a custom tag of the same name replaces it with the URL without its query.

Envoy docs: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/trace/v3/opentelemetry.proto
and https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/observability/tracing
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, grpc_service_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from google.protobuf import duration_pb2

from meshgate import ir
from meshgate.errors import StartupError

OTLP_CLUSTER = "meshgate/otlp"  # never a Backend's name: those are backend/NAMESPACE/NAME

# Span attributes meshgate sets, beside Envoy's own (http.method, http.status_code,
# upstream_cluster, guid:x-request-id, ...). Values use access-log format specifiers.
CUSTOM_TAGS = {
    # Replaces Envoy's http.url, which includes the query string.
    "http.url": "%REQ(:SCHEME)%://%REQ(:AUTHORITY)%%PATH(NQ)%",
    # The Envoy route (Gateway API rule and match) that served the request.
    "meshgate.route": "%ROUTE_NAME%",
}


@dataclass(frozen=True)
class TracingOptions:
    """Where Envoy exports spans, and how many requests it traces."""

    host: str
    port: int
    sampling_percent: float = 100.0
    service_name: str = "meshgate"
    # A Gateway's EnvoyProxy tags: (tag, Literal | Environment | RequestHeader, value or name, default)
    custom_tags: tuple[tuple[str, str, str, str | None], ...] = ()
    cluster: str = OTLP_CLUSTER  # the cluster of the collector (one per collector a Gateway names)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"


def otlp_grpc_endpoint(environ: Mapping[str, str], signal: str) -> tuple[str, int] | None:
    """(host, port) of the OTLP/gRPC receiver for `signal` ("TRACES" or "METRICS") from the
    OpenTelemetry SDK variables (OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT);
    None when unset or OTEL_<SIGNAL>_EXPORTER=none. StartupError on a value Envoy can't use."""
    if environ.get(f"OTEL_{signal}_EXPORTER", "").strip().lower() == "none":
        return None
    endpoint = (environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
    if not endpoint:
        return None
    protocol = (environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip()
    if protocol != "grpc":
        raise StartupError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: meshgate's Envoy exports over OTLP/gRPC only (grpc)")
    url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if url.scheme != "http" or not url.hostname or url.path not in ("", "/"):
        raise StartupError(f"OTLP endpoint {endpoint!r}: expected http://HOST:PORT of an OTLP gRPC receiver "
                           "(TLS to the collector is not supported yet)")
    try:
        port = url.port or 4317
    except ValueError:
        raise StartupError(f"OTLP endpoint {endpoint!r}: bad port") from None
    return url.hostname, port


def tracing_from_env(environ: Mapping[str, str]) -> TracingOptions | None:
    """TracingOptions from the OpenTelemetry SDK environment variables; None when tracing is off."""
    endpoint = otlp_grpc_endpoint(environ, "TRACES")
    if endpoint is None:
        return None
    ratio_text = environ.get("OTEL_TRACES_SAMPLER_ARG", "1").strip() or "1"
    try:
        ratio = float(ratio_text)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise StartupError(f"OTEL_TRACES_SAMPLER_ARG={ratio_text}: expected a share of requests from 0 to 1")
    return TracingOptions(host=endpoint[0], port=endpoint[1], sampling_percent=round(ratio * 100, 6),
                          service_name=environ.get("OTEL_SERVICE_NAME", "").strip() or "meshgate")


def listener_tracing(gateway: ir.Tracing | None, environment: TracingOptions | None) -> TracingOptions | None:
    """The tracer of one listener: its Gateway's EnvoyProxy (`ir.ClientSettings.tracing`) if it
    names one, else the environment's (OTEL_EXPORTER_OTLP_*), else none."""
    if gateway is None:
        return environment
    return TracingOptions(
        host=gateway.host, port=gateway.port, sampling_percent=gateway.sampling_percent,
        service_name=gateway.service_name or (environment.service_name if environment else "meshgate"),
        custom_tags=gateway.custom_tags, cluster=f"{OTLP_CLUSTER}/{gateway.host}/{gateway.port}")


def set_tracing(hcm: hcm_pb2.HttpConnectionManager, options: TracingOptions) -> None:
    """Turn on tracing in a listener's HTTP connection manager."""
    tracing = hcm.tracing
    config = opentelemetry_pb2.OpenTelemetryConfig(service_name=options.service_name)
    config.grpc_service.envoy_grpc.cluster_name = options.cluster
    config.grpc_service.timeout.CopyFrom(duration_pb2.Duration(seconds=5))
    tracing.provider.name = "envoy.tracers.opentelemetry"
    tracing.provider.typed_config.Pack(config, deterministic=True)
    # Requests are traced at this rate, also those whose caller sent a sampled `traceparent`
    # (Envoy's decision, not the caller's: seen with Envoy 1.40 at 0%); an unsampled one
    # stays unsampled. 100% is Envoy's default, set anyway to be explicit.
    tracing.random_sampling.value = options.sampling_percent
    for name, value in CUSTOM_TAGS.items():
        tracing.custom_tags.append(custom_tag_pb2.CustomTag(tag=name, value=value))
    for name, kind, value, default in options.custom_tags:
        tag = custom_tag_pb2.CustomTag(tag=name)
        if kind == "Literal":
            tag.literal.value = value
        elif kind == "Environment":  # read by Envoy from its own process environment
            tag.environment.name, tag.environment.default_value = value, default or ""
        else:
            tag.request_header.name, tag.request_header.default_value = value, default or ""
        tracing.custom_tags.append(tag)


def otlp_cluster(options: TracingOptions) -> cluster_pb2.Cluster:
    """The cluster Envoy sends OTLP/gRPC (HTTP/2) to, with its endpoint inline (no EDS)."""
    cluster = cluster_pb2.Cluster(name=options.cluster)
    cluster.connect_timeout.CopyFrom(duration_pb2.Duration(seconds=1))
    try:
        ipaddress.ip_address(options.host)
        cluster.type = cluster_pb2.Cluster.STATIC
    except ValueError:
        cluster.type = cluster_pb2.Cluster.STRICT_DNS  # a host name: Envoy resolves (and re-resolves) it
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    cluster.load_assignment.CopyFrom(endpoint_pb2.ClusterLoadAssignment(cluster_name=options.cluster))
    cluster.load_assignment.endpoints.add().lb_endpoints.add(endpoint=endpoint_components_pb2.Endpoint(
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=options.host, port_value=options.port))))
    protocol = http_protocol_options_pb2.HttpProtocolOptions()
    protocol.explicit_http_config.http2_protocol_options.SetInParent()  # gRPC needs HTTP/2
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Pack(
        protocol, deterministic=True)
    return cluster


_ = grpc_service_pb2  # imported so GrpcService is in the descriptor pool
