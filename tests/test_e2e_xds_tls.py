"""`meshgate xds` with the ADS port over mutual TLS: a real Envoy with a client certificate for
its node group gets its config and serves; a client without a certificate, or with one for
another group, gets nothing; a rotated server certificate is used for new connections without a
restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import trustme
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from harness import ROOT, free_port, request, wait_until
from meshgate.xds.snapshot import CLUSTER

CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: {http}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: app}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {upstream}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{value: /app}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
"""


def _pair(directory: Path, name: str, cert: trustme.LeafCert) -> tuple[str, str]:
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return str(crt), str(key)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("xds-tls")
    ca, client_ca = trustme.CA(), trustme.CA()  # one signs the server, the other the Envoys
    (work / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (work / "client-ca.pem").write_bytes(client_ca.cert_pem.bytes())
    server_crt, server_key = _pair(work, "server", ca.issue_cert("127.0.0.1"))
    certs = {"edge": _pair(work, "edge", client_ca.issue_cert("edge")),
             "payments": _pair(work, "payments", client_ca.issue_cert("payments")),
             "meshgate-edge": _pair(work, "companion", client_ca.issue_cert("meshgate-edge"))}
    http, upstream, xds, status = free_port(), free_port(), free_port(), free_port()
    config = work / "config"
    config.mkdir()
    (config / "edge.yaml").write_text(CONFIG.format(http=http, upstream=upstream))
    echo = subprocess.Popen([sys.executable, "-m", "meshgate.devtools.upstreams", "--name", "app", "--port", str(upstream)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([sys.executable, "-m", "meshgate", "xds", str(config), "--xds-address", f"127.0.0.1:{xds}",
                             "--status-address", f"127.0.0.1:{status}", "--xds-tls-cert", server_crt,
                             "--xds-tls-key", server_key, "--xds-client-ca", str(work / "client-ca.pem")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(work / "xds.stderr").open("wb"))
    try:
        wait_until(lambda: b"xDS server listening" in (work / "xds.stderr").read_bytes(), timeout=20,
                   what="meshgate xds to start")
        yield {"work": work, "http": http, "xds": xds, "ca": ca, "certs": certs, "server": (server_crt, server_key),
               "status": f"http://127.0.0.1:{status}"}
    finally:
        for p in (proc, echo):
            p.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        echo.wait(timeout=10)


def _bootstrap(plane, *tls: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshgate", "bootstrap", "--xds-address", f"127.0.0.1:{plane['xds']}",
                           "--node-id", "edge-tls", "--admin-port", "0", *tls], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


async def _ads(plane, client: str | None) -> str:
    """Ask for clusters of group edge over TLS; the gRPC status code name (or OK)."""
    root = plane["ca"].cert_pem.bytes()
    if client is None:
        creds = grpc.ssl_channel_credentials(root_certificates=root)
    else:
        crt, key = plane["certs"][client]
        creds = grpc.ssl_channel_credentials(root, Path(key).read_bytes(), Path(crt).read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{plane['xds']}", creds) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        node = base_pb2.Node(id=f"probe-{client}", cluster="edge")

        async def requests():
            yield discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER)
            await asyncio.sleep(10)

        call = stub.StreamAggregatedResources(requests(), timeout=5)
        try:
            async for response in call:
                return "OK" if response.resources else "EMPTY"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return "CLOSED"


def test_an_envoy_with_its_groups_certificate_is_served(plane) -> None:
    from meshgate.envoy.process import find_envoy

    crt, key = plane["certs"]["edge"]
    out = _bootstrap(plane, "--xds-tls-cert", crt, "--xds-tls-key", key, "--xds-ca", str(plane["work"] / "ca.pem"))
    assert out.returncode == 0, out.stderr
    bootstrap = json.loads(out.stdout)
    socket_config = bootstrap["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    assert socket_config["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"] == crt
    (plane["work"] / "bootstrap.json").write_text(out.stdout)
    envoy = subprocess.Popen([find_envoy(), "-c", str(plane["work"] / "bootstrap.json"), "--use-dynamic-base-id",
                              "--concurrency", "1", "-l", "warning", "--log-path", str(plane["work"] / "envoy.log")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        resp = wait_until(lambda: (r := request(plane["http"], "/app/x")).status == 200 and r, timeout=20,
                          what="traffic through the Envoy configured over mutual TLS")
        assert resp.upstream == "app"
    finally:
        os.killpg(envoy.pid, signal.SIGTERM)
        envoy.wait(timeout=10)


async def test_a_client_without_a_certificate_gets_nothing(plane) -> None:
    assert await _ads(plane, None) == "UNAVAILABLE"  # no TLS session without a client certificate


async def test_a_certificate_for_another_group_gets_nothing(plane) -> None:
    assert await _ads(plane, "payments") == "PERMISSION_DENIED"
    assert "asks for group 'edge', its certificate names ['payments']" in (plane["work"] / "xds.stderr").read_text()
    assert await _ads(plane, "edge") == "OK"


def _companion(plane, name: str, *tls: str) -> tuple[subprocess.Popen, int, Path]:
    """`meshgate edge` against the TLS ADS port; its process, gRPC port and log."""
    port = free_port()
    log = plane["work"] / f"edge-{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "meshgate", "edge", "--xds-address", f"127.0.0.1:{plane['xds']}",
                             "--address", f"127.0.0.1:{port}", "--metrics-address", "off", "--node-id", f"edge-{name}",
                             *tls], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    return proc, port, log


async def _companion_health(port: int) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_the_edge_companion_takes_its_config_over_mutual_tls(plane) -> None:
    """The companion with a certificate naming its group (meshgate-edge) gets its config and
    serves; with another group's certificate it gets nothing and says why in its log."""
    ca = str(plane["work"] / "ca.pem")
    crt, key = plane["certs"]["meshgate-edge"]
    good, good_port, _ = _companion(plane, "good", "--xds-tls-cert", crt, "--xds-tls-key", key, "--xds-ca", ca)
    crt, key = plane["certs"]["payments"]
    bad, bad_port, bad_log = _companion(plane, "bad", "--xds-tls-cert", crt, "--xds-tls-key", key, "--xds-ca", ca)
    try:
        async def serving(port: int) -> bool:
            return await _companion_health(port) == "SERVING"

        for _ in range(200):  # bounded: 20 s
            if await serving(good_port):
                break
            await asyncio.sleep(0.1)
        assert await _companion_health(good_port) == "SERVING"
        await asyncio.to_thread(wait_until, lambda: "PERMISSION_DENIED" in bad_log.read_text(), 15, 0.1,
                                "the refused companion to log why")
        assert await _companion_health(bad_port) == "NOT_SERVING"
    finally:
        for proc in (good, bad):
            proc.send_signal(signal.SIGTERM)
        assert good.wait(timeout=15) == 0 and bad.wait(timeout=15) == 0


@pytest.mark.parametrize("flags, message", [
    (["--xds-tls-cert", "x.crt"], "mutual TLS needs --xds-tls-cert, --xds-tls-key and --xds-ca together"),
    (["--xds-server-name", "xds"], "--xds-server-name is for mutual TLS"),
    (["--xds-tls-cert", "/nonexistent.crt", "--xds-tls-key", "k", "--xds-ca", "c"], "--xds-tls-cert /nonexistent.crt:"),
])
def test_bad_companion_tls_flags_are_refused(flags: list[str], message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "meshgate", "edge", "--metrics-address", "off", *flags], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_a_plaintext_client_gets_nothing(plane) -> None:
    with socket.create_connection(("127.0.0.1", plane["xds"]), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        try:
            data = s.recv(100)
        except (ConnectionResetError, socket.timeout):
            data = b""
    # Not an HTTP/2 server's SETTINGS frame (type 0x04 at byte 3): a TLS alert (0x15) or nothing.
    assert data == b"" or data[0] == 0x15, data[:20]


def _served_serial(plane) -> int:
    ctx = ssl.create_default_context(cafile=str(plane["work"] / "ca.pem"))
    ctx.set_alpn_protocols(["h2"])
    crt, key = plane["certs"]["edge"]
    ctx.load_cert_chain(crt, key)
    with socket.create_connection(("127.0.0.1", plane["xds"]), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


def test_a_rotated_server_certificate_is_used_without_a_restart(plane) -> None:
    from cryptography import x509

    before = _served_serial(plane)
    crt, key = plane["server"]
    new = plane["ca"].issue_cert("127.0.0.1")
    tmp_crt, tmp_key = _pair(plane["work"], "rotated", new)
    os.replace(tmp_key, key)
    os.replace(tmp_crt, crt)
    expected = x509.load_pem_x509_certificate(Path(crt).read_bytes()).serial_number
    assert expected != before
    wait_until(lambda: _served_serial(plane) == expected, timeout=10, what="the rotated certificate")
