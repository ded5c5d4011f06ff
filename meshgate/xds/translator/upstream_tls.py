"""Upstream TLS: the `envoy.transport_sockets.tls` socket a cluster opens its connections with
(an `UpstreamTlsContext`), and the CA-bundle Secret it verifies the backend against.

Certificates, keys and CA bundles reach Envoy by name over SDS (the same ADS stream), never
inline in the cluster, as for the listeners' certificates: a rotated CA or client certificate is
a new Secret, applied without re-creating the cluster or its connection pools.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/tls.proto
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from meshgate import ir

TRANSPORT_SOCKET = "envoy.transport_sockets.tls"


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3)


def upstream_tls_context(tls: ir.UpstreamTLS) -> tls_pb2.UpstreamTlsContext:
    ctx = tls_pb2.UpstreamTlsContext()
    if tls.sni:
        ctx.sni = tls.sni  # the server name in the ClientHello (the backend picks its certificate by it)
    common = ctx.common_tls_context
    common.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2
    # ALPN: what Envoy offers the backend; with h2 and http/1.1 the backend chooses (see the
    # cluster's auto_config), with one protocol that protocol or nothing.
    common.alpn_protocols.extend(tls.alpn)
    if tls.client_secret:
        # mTLS: the client certificate Envoy presents, by SDS name.
        common.tls_certificate_sds_secret_configs.add(name=tls.client_secret, sds_config=_ads())
    if tls.ca_secret:
        # Verification: the chain must lead to a CA of the bundle (a Secret, by SDS name) and the
        # certificate must carry the DNS name (SAN) we asked for. Without a validation context
        # Envoy accepts any certificate: that is insecureSkipVerify.
        combined = common.combined_validation_context
        if tls.verify_name:
            combined.default_validation_context.match_typed_subject_alt_names.add(
                san_type=common_pb2.SubjectAltNameMatcher.DNS,
                matcher=string_pb2.StringMatcher(exact=tls.verify_name))
        combined.validation_context_sds_secret_config.name = tls.ca_secret
        combined.validation_context_sds_secret_config.sds_config.CopyFrom(_ads())
    return ctx


def transport_socket(tls: ir.UpstreamTLS) -> base_pb2.TransportSocket:
    socket = base_pb2.TransportSocket(name=TRANSPORT_SOCKET)
    socket.typed_config.Pack(upstream_tls_context(tls), deterministic=True)
    return socket


def translate_ca_secret(secret: ir.CASecret) -> secret_pb2.Secret:
    out = secret_pb2.Secret(name=secret.name)
    if secret.ca_file is not None:
        out.validation_context.trusted_ca.filename = secret.ca_file  # read by Envoy, on its machine
    else:
        out.validation_context.trusted_ca.inline_bytes = secret.ca_pem
    return out
