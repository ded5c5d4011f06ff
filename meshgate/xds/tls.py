"""The ADS port over TLS with client certificates (mutual TLS), for `meshgate xds` on a network.

The snapshot holds private keys and API keys, so an xDS port beyond loopback must know who it
talks to: every client presents a certificate signed by the configured CA (a client without
one gets no TLS session, so nothing at all), and a client may only ask for the node group
(Envoy's `node.cluster`) its certificate names — its Common Name or one of its DNS/URI subject
alternative names — so an Envoy of one group can't read another group's listeners and keys.

The server's certificate and key and the client CA are read again when their files change
(gRPC asks `_Credentials.fetch` on every new connection): a rotated certificate is served
to new connections without a restart; open streams keep theirs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import grpc

from meshgate.errors import StartupError
from meshgate.providers.file import FileReadError, read_regular_file

log = logging.getLogger("meshgate.xds.tls")

__all__ = ["XdsTLS", "server_credentials", "peer_identities"]


@dataclass(frozen=True)
class XdsTLS:
    cert_file: str  # the server's certificate chain (PEM)
    key_file: str  # its private key (PEM)
    client_ca_file: str  # the CA that signs the clients' certificates (PEM)
    bind_group: bool = True  # a client may only ask for the group its certificate names


class _Credentials:
    def __init__(self, tls: XdsTLS) -> None:
        self.tls = tls
        self.stamp = self._stamp()
        self.config = self._load()

    def _stamp(self) -> tuple:
        out = []
        for path in (self.tls.cert_file, self.tls.key_file, self.tls.client_ca_file):
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        try:
            cert = read_regular_file(self.tls.cert_file, max_bytes=1 << 20)
            key = read_regular_file(self.tls.key_file, max_bytes=1 << 20)
            ca = read_regular_file(self.tls.client_ca_file, max_bytes=1 << 20)
        except FileReadError as exc:
            raise StartupError(f"xDS TLS: {exc}") from None
        for path, data, marker in ((self.tls.cert_file, cert, b"CERTIFICATE"), (self.tls.key_file, key, b"PRIVATE KEY"),
                                   (self.tls.client_ca_file, ca, b"CERTIFICATE")):
            if b"-----BEGIN " not in data or marker not in data:
                raise StartupError(f"xDS TLS: {path}: not a PEM {marker.decode().lower()}")
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC for each new connection: a new configuration when the files changed
        (None: keep the current one)."""
        stamp = self._stamp()
        if stamp == self.stamp:
            return None
        try:
            config = self._load()
        except StartupError as exc:  # half-written during a rotation: keep serving the old one
            log.warning("xDS TLS files changed but can't be used yet (%s); still serving the previous certificate", exc)
            return None
        self.stamp, self.config = stamp, config
        log.info("xDS TLS certificate reloaded", extra={"cert": self.tls.cert_file})
        return config


def server_credentials(tls: XdsTLS) -> grpc.ServerCredentials:
    """Mutual-TLS server credentials that follow the files (see the module doc)."""
    creds = _Credentials(tls)
    return grpc.dynamic_ssl_server_credentials(creds.config, creds.fetch, require_client_authentication=True)


def peer_identities(context: grpc.aio.ServicerContext) -> set[str]:
    """The names a TLS client's certificate carries (Common Name, DNS and URI SANs); empty on a
    plaintext connection."""
    auth = context.auth_context() or {}
    names = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names.update(v.decode() if isinstance(v, bytes) else v for v in auth.get(key, ()))
    names.discard("")
    return names
