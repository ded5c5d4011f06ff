"""Backend `spec.tls` → IR `UpstreamTLS`: the CA bundle and client certificate resolved (Secrets
or files), checked the way Envoy would check them, and the SNI / name to verify decided.

Shape: Envoy Gateway's Backend `spec.tls` (`caCertificateRefs`, `wellKnownCACertificates`,
`insecureSkipVerify`, `sni`, `clientCertificateRef`, `alpnProtocols`), not Gateway API's
BackendTLSPolicy: a meshgate Backend is its own object (no Service to target), so its TLS
belongs on it, as in Envoy Gateway. A Backend whose TLS can't be resolved is reported
(`ResolvedRefs=False`, with its file and line) and not programmed: Envoy never falls back to
plaintext, and requests routed to it get 503 (no cluster).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import ssl
from typing import TYPE_CHECKING

from meshgate import ir
from meshgate.api.models import CA_FILE_OPTION, CLIENT_CERT_FILE_OPTION, CLIENT_KEY_FILE_OPTION, Backend
from meshgate.gatewayapi.checks import ca_bundle_problem, pem_problem
from meshgate.gatewayapi.config_maps import ca_bundle
from meshgate.gatewayapi.status import Condition, object_key
from meshgate.providers.file import FileReadError

if TYPE_CHECKING:
    from meshgate.gatewayapi.translator import _Translator

__all__ = ["resolve_backend_tls", "system_ca_file"]

Secrets = dict[str, "ir.Secret | ir.CASecret"]


def system_ca_file() -> str:
    """The OS trust bundle (Debian: /etc/ssl/certs/ca-certificates.crt), for
    `wellKnownCACertificates: System`."""
    paths = ssl.get_default_verify_paths()
    return paths.cafile or paths.openssl_cafile


def resolve_backend_tls(t: _Translator, backend: Backend, secrets: Secrets) -> tuple[bool, ir.UpstreamTLS | None]:
    """(usable, TLS settings). Adds the SDS secrets it needs to `secrets`; on a problem, reports
    it on the Backend and returns (False, None)."""
    tls = backend.spec.tls
    if tls is None:
        return True, None
    where = ("spec", "tls")
    ok = True

    def bad(path: tuple, reason: str, message: str) -> None:
        nonlocal ok
        ok = False
        t.status.condition(backend, Condition("ResolvedRefs", "False", reason, message), (*where, *path))

    ns = backend.metadata.namespace
    base = os.path.dirname(t.docs[object_key(backend)].file)

    def read(option: str) -> bytes | None:
        path = os.path.normpath(os.path.join(base, tls.options[option]))  # as the user wrote it
        try:
            return t.read_file(path)
        except FileReadError as exc:
            bad(("options", option), "InvalidCACertificateRef" if option == CA_FILE_OPTION else "InvalidClientCertificateRef",
                f"cannot read file {path} ({exc.reason})")
            return None

    # -- whom to trust
    ca_name: str | None = None
    ca_pem: bytes | None = None
    if tls.ca_certificate_refs:
        pems = []
        for i, ref in enumerate(tls.ca_certificate_refs):
            if ref.kind == "ConfigMap":  # a CA bundle is no secret: Kubernetes users often keep it in a ConfigMap
                pem, why = ca_bundle(t, ns, ref.name)
                if pem is None:
                    bad(("caCertificateRefs", i, "name"), "InvalidCACertificateRef", why)
                else:
                    pems.append(pem)
                continue
            secret = t.secrets.get((ns, ref.name))
            if secret is None:
                bad(("caCertificateRefs", i, "name"), "InvalidCACertificateRef", t._missing("", "Secret", ns, ref.name))
                continue
            pem = _secret_value(secret, "ca.crt")
            if pem is None:
                bad(("caCertificateRefs", i), "InvalidCACertificateRef",
                    f"Secret {ns}/{ref.name} has no valid ca.crt (data or stringData)")
                continue
            pems.append(pem)
        if len(pems) == len(tls.ca_certificate_refs):
            ca_pem = b"\n".join(p.rstrip(b"\n") for p in pems) + b"\n"
            ca_name = "ca/secret/" + ",".join(f"{ns}/{r.name}" if r.kind == "Secret" else f"configmap:{ns}/{r.name}"
                                              for r in tls.ca_certificate_refs)
            where_ca: tuple = ("caCertificateRefs",)
    elif tls.well_known_ca_certificates == "System":
        path = system_ca_file()
        try:
            ca_pem = t.read_file(path) if path else None
        except FileReadError as exc:
            bad(("wellKnownCACertificates",), "InvalidCACertificateRef", f"cannot read the system CA bundle {path} ({exc.reason})")
        if ca_pem is None and ok:
            bad(("wellKnownCACertificates",), "InvalidCACertificateRef", "this system has no CA bundle")
        ca_name, where_ca = f"ca/file{os.path.abspath(path or '')}", ("wellKnownCACertificates",)
    elif CA_FILE_OPTION in tls.options:
        ca_pem = read(CA_FILE_OPTION)
        ca_name = f"ca/file{os.path.abspath(os.path.join(base, tls.options[CA_FILE_OPTION]))}"
        where_ca = ("options", CA_FILE_OPTION)
    if ca_pem is not None:
        problem = ca_bundle_problem(ca_pem)
        if problem:
            bad(where_ca, "InvalidCACertificateRef", problem)
        else:
            secrets[ca_name] = ir.CASecret(ca_name, ca_pem)

    # -- who we are (mTLS)
    client_name: str | None = None
    if tls.client_certificate_ref is not None:
        ref = tls.client_certificate_ref
        ref_ns = ref.namespace or ns
        path = ("clientCertificateRef",)
        secret = t.secrets.get((ref_ns, ref.name))
        if secret is None:
            bad((*path, "name"), "InvalidClientCertificateRef", t._missing("", "Secret", ref_ns, ref.name))
        elif ref_ns != ns and not t.granted(backend, "", "Secret", ref_ns, ref.name):
            bad((*path, "namespace"), "RefNotPermitted",
                f"Secret {ref_ns}/{ref.name} is in another namespace and no ReferenceGrant allows it")
        else:
            cert, key = _secret_value(secret, "tls.crt"), _secret_value(secret, "tls.key")
            problem = "needs tls.crt and tls.key (data or stringData)" if cert is None or key is None else pem_problem(cert, key)
            if problem:
                bad(path, "InvalidClientCertificateRef", f"Secret {ref_ns}/{ref.name}: {problem}")
            else:
                client_name = f"secret/{ref_ns}/{ref.name}"
                secrets[client_name] = ir.Secret(client_name, cert, key)
    elif CLIENT_CERT_FILE_OPTION in tls.options:
        cert, key = read(CLIENT_CERT_FILE_OPTION), read(CLIENT_KEY_FILE_OPTION)
        if cert is not None and key is not None:
            problem = pem_problem(cert, key)
            if problem:
                bad(("options",), "InvalidClientCertificateRef", problem)
            else:
                client_name = f"file{os.path.abspath(os.path.join(base, tls.options[CLIENT_CERT_FILE_OPTION]))}"
                secrets[client_name] = ir.Secret(client_name, cert, key)

    # -- the name to ask for and to verify
    names = {e.address.rstrip(".").lower() for e in backend.spec.endpoints if not _is_ip(e.address)}
    sni = tls.sni or (next(iter(names)) if len(names) == 1 and len(backend.spec.endpoints) == len(
        [e for e in backend.spec.endpoints if not _is_ip(e.address)]) else None)
    if sni is None and not tls.insecure_skip_verify:
        bad(("sni",), "InvalidBackendTLS", "set sni: the name the backend's certificate is for (Envoy sends it and "
            "checks the certificate against it); it has no default when endpoints are IP addresses or several names")
    if not ok:
        return False, None
    alpn = tuple(tls.alpn_protocols) or (("h2",) if backend.spec.protocol in ("HTTP2", "GRPC") else ("http/1.1",))
    return True, ir.UpstreamTLS(sni=sni, verify_name=None if tls.insecure_skip_verify else sni,
                                ca_secret=None if tls.insecure_skip_verify else ca_name,
                                client_secret=client_name, alpn=alpn)


def _secret_value(secret, name: str) -> bytes | None:  # noqa: ANN001 - models.Secret
    if name in secret.string_data:
        return secret.string_data[name].encode()
    if name in secret.data:
        try:
            return base64.b64decode(secret.data[name], validate=True)
        except ValueError:
            return None
    return None


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False
