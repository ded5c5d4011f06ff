"""Upstreams that speak TLS and demand a client certificate, for tests/test_e2e_upstream_tls.py.

Run as a subprocess (the test stops it by PID):

    python tests/tls_upstreams.py CERT KEY CLIENT_CA HTTPS_PORT GRPC_PORT

- HTTPS_PORT: HTTP/1.1 over TLS (Python `ssl`, ALPN http/1.1 only). Answers every request with
  JSON: the path, the HTTP version, the negotiated ALPN, the SNI the client sent and the
  client certificate's subject CN.
- GRPC_PORT: the gRPC echo service over TLS (h2 by ALPN), also requiring a client certificate.

Prints "ready" once both listen.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from meshgate.devtools.grpc_echo import GrpcEchoServer  # noqa: E402


def https_server(cert: str, key: str, client_ca: str, port: int) -> ThreadingHTTPServer:
    sni_seen: dict[int, str | None] = {}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no handshake
    context.set_alpn_protocols(["http/1.1"])
    context.sni_callback = lambda sock, name, ctx: sni_seen.__setitem__(id(sock), name)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            peer = self.connection.getpeercert() or {}
            subject = dict(pair[0] for pair in peer.get("subject", ()))
            body = json.dumps({
                "path": self.path, "version": self.request_version,
                "alpn": self.connection.selected_alpn_protocol(),
                "sni": sni_seen.get(id(self.connection)),
                "client_cn": subject.get("commonName") or peer.get("subjectAltName", [[None, None]])[0][1],
            }).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


async def main() -> None:
    cert, key, client_ca, https_port, grpc_port = sys.argv[1:6]
    https = https_server(cert, key, client_ca, int(https_port))
    threading.Thread(target=https.serve_forever, daemon=True).start()
    credentials = grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=Path(client_ca).read_bytes(), require_client_auth=True)
    grpc_server = GrpcEchoServer("grpc-tls", port=int(grpc_port), credentials=credentials)
    await grpc_server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until the test terminates us


if __name__ == "__main__":
    asyncio.run(main())
