"""The Envoy bootstrap: the one static file Envoy reads at start-up.

Everything meshgate configures at run time (listeners, routes, clusters, endpoints) arrives
later over ADS, the aggregated xDS gRPC stream to the meshgate control plane. The bootstrap
only has to tell Envoy who it is (node), where its admin interface listens, and how to reach
the control plane (one static cluster plus the ADS settings).

Envoy docs: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/bootstrap/v3/bootstrap.proto
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

from meshgate.envoy.overload import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEAP_BYTES,
    overload_manager,
)
from meshgate.envoy.stats import stats_resources

# Name of the static cluster that points at the meshgate xDS server. Dynamic clusters sent over
# ADS must never use this name, or they would replace the control-plane connection.
XDS_CLUSTER_NAME = "meshgate_xds"
OTLP_METRICS_CLUSTER = "meshgate_otlp_metrics"  # the OTLP receiver Envoy pushes its metrics to

# For `meshgate bootstrap --node-id`.
NODE_ID_HELP = ("Envoy node.id, which must be unique per Envoy (default: $POD_NAME if set, else "
                "HOSTNAME-PID of the meshgate process that renders the bootstrap); replicas share --group "
                "(node.cluster), never the id")


def default_node_id() -> str:
    """A node.id unique per Envoy: ``$POD_NAME`` (Kubernetes, via the downward API), else
    ``<hostname>-<pid>`` of this process.

    The control plane tells Envoys apart by node.id in its logs and /status; replicas rendered
    from one template must not share one (the group they share is node.cluster).
    """
    pod = os.environ.get("POD_NAME", "").strip()
    return pod or f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class BootstrapOptions:
    """What varies between Envoy instances driven by meshgate."""

    xds_port: int
    xds_host: str = "127.0.0.1"
    # None: default_node_id() at render time.
    node_id: str | None = None
    # meshgate keys snapshots by node.cluster (the "node group"): every Envoy with the same
    # node_cluster receives the same configuration.
    node_cluster: str = "edge"
    # The admin interface can change and dump config; keep it on loopback.
    admin_host: str = "127.0.0.1"
    # 0 = ephemeral; EnvoyProcess then reads the bound port from --admin-address-path.
    admin_port: int = 19901
    # Incremental (delta) xDS instead of state-of-the-world.
    delta: bool = False
    # Overload manager limits (see meshgate.envoy.overload): heap and total client connections.
    max_heap_bytes: int = DEFAULT_MAX_HEAP_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # Where Prometheus scrapes Envoy's metrics (meshgate.envoy.stats): a static listener serving
    # only /stats/prometheus and /ready; None = no such listener. Needs a fixed admin_port.
    stats_host: str = "127.0.0.1"
    stats_port: int | None = None
    # Mutual TLS to `meshgate xds --xds-tls-*` (meshgate.xds.tls): this Envoy's client certificate
    # and key, the CA that signed the server's certificate, and the name to verify it for (default
    # xds_host). None: plaintext (loopback).
    xds_tls: XdsClientTLS | None = None
    # Envoy's metrics pushed over OTLP/gRPC (the OpenTelemetry stat sink) to this (host, port), as
    # well as served for Prometheus; None: not pushed. From OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT.
    otlp_metrics: tuple[str, int] | None = None


@dataclass(frozen=True)
class XdsClientTLS:
    cert_file: str
    key_file: str
    ca_file: str
    server_name: str | None = None


def render_bootstrap(opts: BootstrapOptions) -> dict[str, Any]:
    """Return an Envoy v3 bootstrap as a JSON-able dict (Envoy accepts it as .json or .yaml)."""
    # GRPC = state-of-the-world: every response carries all resources of a type.
    # DELTA_GRPC = incremental: responses carry only added/changed/removed resources.
    api_type = "DELTA_GRPC" if opts.delta else "GRPC"
    bootstrap = {
        # node identifies this Envoy to the control plane; it is sent on the xDS stream.
        "node": {"id": opts.node_id or default_node_id(), "cluster": opts.node_cluster},
        # The admin interface serves /ready, /stats, /config_dump. Its own access log is
        # discarded: health checks poll it often and would only add noise.
        "admin": {
            "address": _socket_address(opts.admin_host, opts.admin_port),
            "access_log": [
                {
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": "type.googleapis.com/"
                        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": "/dev/null",
                    },
                }
            ],
        },
        "dynamic_resources": {
            # ADS: one gRPC stream carries every resource type, so Envoy gets them in an order
            # the control plane controls (clusters before the listeners that use them).
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER_NAME}}],
                # The node is sent once per stream, not on every request: less traffic.
                "set_node_on_first_message_only": True,
            },
            # CDS (clusters) and LDS (listeners) come over ADS. Routes and endpoints are
            # referenced from them and also fetched over ADS.
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": _static_resources(opts),
        # Degrade (503s, refused connections) before the heap or connection count runs out.
        "overload_manager": overload_manager(opts.max_heap_bytes, opts.max_connections),
    }
    if opts.otlp_metrics is not None:
        # Stat sinks live in the bootstrap (not xDS): every stats flush (5 s, Envoy's default)
        # exports every counter, gauge and histogram, cumulative like Prometheus', with Envoy's
        # tag-extracted names and tags as attributes (cluster name, route rule...).
        bootstrap["stats_sinks"] = [{
            "name": "envoy.stat_sinks.open_telemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_METRICS_CLUSTER}},
            },
        }]
    return bootstrap


def _static_resources(opts: BootstrapOptions) -> dict[str, Any]:
    static: dict[str, Any] = {"clusters": [_xds_cluster(opts.xds_host, opts.xds_port, opts.xds_tls)]}
    if opts.otlp_metrics is not None:
        static["clusters"].append(_grpc_cluster(OTLP_METRICS_CLUSTER, *opts.otlp_metrics))
    if opts.stats_port is not None:
        listener, admin_cluster = stats_resources(opts.stats_host, opts.stats_port, opts.admin_host, opts.admin_port)
        static["listeners"] = [listener]
        static["clusters"].append(admin_cluster)
    return static


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _grpc_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    """A static cluster of one gRPC server (gRPC needs HTTP/2)."""
    return {
        "name": name,
        # STATIC: the endpoint is a literal IP. A host name needs STRICT_DNS (Envoy resolves it).
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                # Speak HTTP/2 (h2c); HTTP/2 PINGs every 30 s detect a dead server (the control
                # plane, a collector) or a silently dropped connection within 5 s of a missed reply.
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                    }
                },
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}}]}
            ],
        },
    }


def _xds_cluster(host: str, port: int, tls: XdsClientTLS | None = None) -> dict[str, Any]:
    """The static cluster Envoy uses to reach the meshgate xDS server."""
    cluster = _grpc_cluster(XDS_CLUSTER_NAME, host, port)
    if tls is not None:
        # Mutual TLS: Envoy shows its certificate (which names its node group) and checks the
        # control plane's against the CA, for the server name. Files, read by Envoy (and read
        # again when they change: Envoy watches filename data sources).
        name = tls.server_name or host
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                **({} if _is_ip(name) else {"sni": name}),  # SNI carries host names only (RFC 6066)
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [{"certificate_chain": {"filename": tls.cert_file},
                                          "private_key": {"filename": tls.key_file}}],
                    "validation_context": {
                        "trusted_ca": {"filename": tls.ca_file},
                        "match_typed_subject_alt_names": [
                            {"san_type": "IP_ADDRESS" if _is_ip(name) else "DNS", "matcher": {"exact": name}}],
                    },
                },
            },
        }
    return cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
