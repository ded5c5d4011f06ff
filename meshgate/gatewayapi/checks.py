"""Checks the Gateway API translator shares: hostname intersection, match identity, and whether
Envoy would accept a certificate and key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pem_problem(cert: bytes, key: bytes) -> str | None:
    """Why Envoy would reject this certificate/key pair, or None. Checked here so a bad
    certificate is a config error with a line number, not an Envoy NACK."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(cert)
    except ValueError:
        return "the certificate is not a PEM-encoded X.509 certificate"
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        return "the private key is not an unencrypted PEM-encoded key"
    if certs[0].public_key().public_numbers() != private.public_key().public_numbers():
        return "the private key does not belong to the certificate"
    return None


def ca_bundle_problem(bundle: bytes) -> str | None:
    """Why Envoy would reject this trusted-CA bundle, or None: PEM certificates only, at least
    one (Envoy refuses a validation context it can't load, NACKing the whole cluster)."""
    from cryptography import x509

    if b"PRIVATE KEY" in bundle:
        return "the CA bundle contains a private key: give the CA certificates only"
    try:
        certs = x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return "the CA bundle is not PEM-encoded X.509 certificates"
    if not certs:
        return "the CA bundle holds no certificate"
    return None


def match_identity(match: Any) -> tuple:
    """What makes two matches the same request set (order of headers/params doesn't matter)."""
    headers = tuple(sorted((h.name.lower(), h.type, h.value) for h in match.headers))
    if hasattr(match, "query_params"):
        query = tuple(sorted((q.name, q.type, q.value) for q in match.query_params))
        return ("http", match.path.type, match.path.value, match.method, headers, query)
    method = match.method
    grpc = (method.type, method.service, method.method) if method else None
    return ("grpc", grpc, headers)


def effective_hostnames(route_hostnames: Sequence[str], listener_hostname: str | None) -> tuple[str, ...]:
    """Hostnames a route serves on a listener, by Gateway API's intersection rules.

    A route without hostnames takes the listener's; a listener without one takes the route's;
    otherwise each pair intersects to the more specific name (`*.example.com` ∩ `a.example.com`
    is `a.example.com`). Empty result: the route does not attach to that listener.
    """
    if not route_hostnames:
        return (listener_hostname or "*",)
    if listener_hostname is None:
        return tuple(dict.fromkeys(route_hostnames))
    out: list[str] = []
    for host in route_hostnames:
        if host == listener_hostname:
            out.append(host)
        elif _wildcard_covers(listener_hostname, host):
            out.append(host)
        elif _wildcard_covers(host, listener_hostname):
            out.append(listener_hostname)
    return tuple(dict.fromkeys(out))


def _wildcard_covers(pattern: str, host: str) -> bool:
    return pattern.startswith("*.") and host != pattern and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
