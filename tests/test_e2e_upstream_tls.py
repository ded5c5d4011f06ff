"""Upstream TLS through the real Envoy: Backend `spec.tls` (CA bundle from a file or a Secret,
SNI, client certificate, ALPN), against upstreams that demand a client certificate.

One `meshgate run` for the module. The upstreams (tests/tls_upstreams.py, one subprocess) are an
HTTP/1.1-over-TLS server and a gRPC-over-TLS server (h2 by ALPN), both for `billing.internal`,
both requiring a client certificate signed by the client CA.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ROOT, Meshgate, free_port, request, wait_until


def _indent(pem: bytes, spaces: int = 4) -> str:
    return "\n".join(" " * spaces + line for line in pem.decode().strip().splitlines())


def write_config(folder: Path, client_cert, other_ca) -> None:  # noqa: ANN001 - trustme objects
    """Backends for every case; the CA comes from a file (options) or a Secret."""
    route = lambda path, backend: (  # noqa: E731
        f"    - matches: [{{path: {{value: {path}}}}}]\n"
        f"      backendRefs: [{{group: meshgate.io, kind: Backend, name: {backend}}}]\n")
    backend = lambda name, port, tls, protocol="HTTP1": f"""\
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: {name}}}
spec:
  protocol: {protocol}
  endpoints: [{{address: 127.0.0.1, port: "{port}"}}]
  tls: {tls}
"""  # noqa: E731
    ca_file = "{meshgate.io/ca-certificate-file: ca.pem}"
    client_files = "meshgate.io/client-certificate-file: client.crt, meshgate.io/client-private-key-file: client.key"
    (folder / "upstream-tls.yaml").write_text(
        """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners:
    - {name: http, protocol: HTTP, port: "${HTTP_PORT}"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: apps}
spec:
  parentRefs: [{name: edge}]
  rules:
""" + route("/mtls", "mtls") + route("/negotiate", "negotiate") + route("/no-client-cert", "no-client-cert")
        + route("/wrong-ca", "wrong-ca") + route("/wrong-name", "wrong-name") + """\
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo}
spec:
  parentRefs: [{name: edge}]
  rules:
    - backendRefs: [{group: meshgate.io, kind: Backend, name: grpc}]
"""
        + backend("mtls", "${HTTPS_PORT}", "{sni: billing.internal, options: " + ca_file + ", clientCertificateRef: {name: gateway-client}}")
        + backend("negotiate", "${HTTPS_PORT}", "{sni: billing.internal, alpnProtocols: [h2, http/1.1], options: "
                  "{meshgate.io/ca-certificate-file: ca.pem, " + client_files + "}}")
        + backend("no-client-cert", "${HTTPS_PORT}", "{sni: billing.internal, options: " + ca_file + "}")
        + backend("wrong-ca", "${HTTPS_PORT}", "{sni: billing.internal, caCertificateRefs: [{name: other-ca}], "
                  "clientCertificateRef: {name: gateway-client}}")
        + backend("wrong-name", "${HTTPS_PORT}", "{sni: other.internal, options: " + ca_file
                  + ", clientCertificateRef: {name: gateway-client}}")
        + backend("grpc", "${GRPC_PORT}", "{sni: billing.internal, options: " + ca_file
                  + ", clientCertificateRef: {name: gateway-client}}", protocol="GRPC")
        + f"""\
---
apiVersion: v1
kind: Secret
metadata: {{name: gateway-client}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{_indent(client_cert.cert_chain_pems[0].bytes())}
  tls.key: |
{_indent(client_cert.private_key_pem.bytes())}
---
apiVersion: v1
kind: Secret
metadata: {{name: other-ca}}
type: Opaque
stringData:
  ca.crt: |
{_indent(other_ca.cert_pem.bytes())}
""")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    import trustme

    work = tmp_path_factory.mktemp("upstream-tls")
    config = work / "config"
    config.mkdir()
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server_cert = server_ca.issue_cert("billing.internal")
    client_cert = client_ca.issue_cert("meshgate-gateway")
    server_ca.cert_pem.write_to_path(str(config / "ca.pem"))
    (config / "client.crt").write_bytes(client_cert.cert_chain_pems[0].bytes())
    (config / "client.key").write_bytes(client_cert.private_key_pem.bytes())
    (work / "server.crt").write_bytes(b"".join(p.bytes() for p in server_cert.cert_chain_pems))
    (work / "server.key").write_bytes(server_cert.private_key_pem.bytes())
    client_ca.cert_pem.write_to_path(str(work / "client-ca.pem"))
    write_config(config, client_cert, other_ca)

    env = {name: str(free_port()) for name in ("HTTP_PORT", "HTTPS_PORT", "GRPC_PORT")}
    upstreams = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "tls_upstreams.py"), str(work / "server.crt"), str(work / "server.key"),
         str(work / "client-ca.pem"), env["HTTPS_PORT"], env["GRPC_PORT"]],
        stdout=subprocess.PIPE, stderr=(work / "upstreams.stderr").open("wb"), stdin=subprocess.DEVNULL)
    mg = None
    try:
        assert upstreams.stdout.readline() == b"ready\n", (work / "upstreams.stderr").read_text()
        mg = Meshgate([str(config)], work, env=env).start()
        mg.http = int(env["HTTP_PORT"])
        yield mg
        assert mg.stop() == 0, mg.output()
    finally:
        if mg is not None:
            mg.stop()
        upstreams.terminate()
        try:
            upstreams.wait(timeout=5)
        except subprocess.TimeoutExpired:
            upstreams.kill()
            upstreams.wait(timeout=5)


def test_mtls_with_sni_and_a_verified_certificate(gw) -> None:
    r = request(gw.http, "/mtls/x")
    assert r.status == 200, r.body
    seen = r.json
    assert seen["client_cn"] == "meshgate-gateway"  # Envoy presented the client certificate (SDS)
    assert seen["sni"] == "billing.internal"
    assert seen["alpn"] == "http/1.1" and seen["version"] == "HTTP/1.1"
    assert seen["path"] == "/mtls/x"


def test_negotiated_alpn_falls_back_to_http1(gw) -> None:
    # Envoy offers h2 and http/1.1; this upstream only speaks http/1.1, and Envoy follows it.
    r = request(gw.http, "/negotiate")
    assert r.status == 200, r.body
    assert r.json["alpn"] == "http/1.1" and r.json["client_cn"] == "meshgate-gateway"


# Envoy's per-cluster TLS counters say why a handshake failed (the 503 body only says
# "remote connection failure"): cluster.NAME.ssl.fail_verify_error (chain not from a trusted
# CA), .ssl.fail_verify_san (certificate not for the SNI name), .ssl.connection_error (the
# upstream refused the handshake: here, for want of a client certificate).
@pytest.mark.parametrize("path,counter", [("/wrong-ca", "ssl.fail_verify_error"), ("/wrong-name", "ssl.fail_verify_san"),
                                          ("/no-client-cert", "ssl.connection_error")])
def test_tls_failures_are_503_with_the_reason(gw, path: str, counter: str) -> None:
    r = request(gw.http, path)
    assert r.status == 503, r.body
    assert b"remote connection failure" in r.body or b"connection termination" in r.body, r.body
    name = f"cluster.backend/default/{path[1:]}.{counter}"
    stats = _stats(gw)
    assert stats.get(name, 0) >= 1, {k: v for k, v in stats.items() if f"/{path[1:]}.ssl" in k}


def _stats(gw) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(f"{gw.admin_url}/stats?filter=ssl", timeout=5) as resp:  # noqa: S310 - loopback
        lines = resp.read().decode().splitlines()
    return {k: int(v) for k, _, v in (line.partition(": ") for line in lines) if v.strip().isdigit()}


def test_grpc_over_tls_speaks_h2_by_alpn(gw) -> None:
    from meshgate.devtools import grpc_echo

    async def calls():
        return (await grpc_echo.call_unary(f"127.0.0.1:{gw.http}", b"hi"),
                await grpc_echo.call_bidi(f"127.0.0.1:{gw.http}", [b"a", b"b"]))

    unary, bidi = asyncio.run(calls())
    assert unary == b"grpc-tls:hi"  # the gRPC server only accepts h2 over TLS with a client certificate
    assert bidi == [b"grpc-tls:a", b"grpc-tls:b"]


def test_envoy_got_the_certificates_over_sds(gw) -> None:
    dump = gw.config_dump()
    secrets = next(c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump"))
    names = {s["name"] for s in secrets.get("dynamic_active_secrets", [])}
    assert "secret/default/gateway-client" in names and "ca/secret/default/other-ca" in names
    assert any(n.startswith("ca/file") and n.endswith("/ca.pem") for n in names)
    clusters = {c["cluster"]["name"]: c["cluster"] for c in gw.dump_section("ClustersConfigDump")["dynamic_active_clusters"]}
    context = clusters["backend/default/mtls"]["transport_socket"]["typed_config"]["common_tls_context"]
    assert "tls_certificates" not in context  # never inline
    assert context["tls_certificate_sds_secret_configs"][0]["name"] == "secret/default/gateway-client"


def test_access_log_names_the_upstream_failure(gw) -> None:
    r = request(gw.http, "/wrong-ca")
    assert r.status == 503
    log = Path(gw.status()["envoy"]["access_log"])

    def logged():
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        return [e for e in entries if e["path"] == "/wrong-ca"]
    entry = wait_until(logged, timeout=5, what="access log line")[-1]
    assert "UF" in entry["response_flags"]  # upstream connection failure
