"""Routing through the real Envoy, configured by `meshgate run` over ADS.

One `meshgate run` (control plane + Envoy + sample echo upstreams) serves the config in
`tests/e2e/routing/` for the whole module; each test sends real requests and checks which
upstream answered and what it received.
"""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import Meshgate, free_port, request, wait_until, write_tls_files

CONFIG = Path(__file__).parent / "e2e" / "routing"
UPSTREAMS = ["A_1", "A_2", "B_1", "C_1", "LR_1", "RND_1", "HASH_1", "HASH_2", "HASH_3", "MAG_1", "MAG_2", "GRPC_1"]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("routing")
    ca = write_tls_files(work, ["secure.example.com", "api.example.com"])
    env = {"HTTP_PORT": str(free_port()), "HTTPS_PORT": str(free_port()), "TLS_DIR": str(work)}
    env.update({f"PORT_{name}": str(free_port()) for name in UPSTREAMS})
    partner_ca = write_partner_gateway(work / "partner")
    mg = Meshgate([str(CONFIG), str(work / "partner")], work, env=env).start()
    mg.partner_ca = partner_ca
    mg.http = int(env["HTTP_PORT"])
    mg.https = int(env["HTTPS_PORT"])
    mg.ca = ca
    mg.grpc_target = f"127.0.0.1:{mg.http}"
    yield mg
    assert mg.stop() == 0, mg.output()


def write_partner_gateway(folder: Path) -> Path:
    """A second Gateway on the same HTTPS port, for partner.example.com only, with its own
    certificate from a v1 Secret (another CA): Envoy must pick the certificate by SNI."""
    import trustme

    folder.mkdir()
    ca = trustme.CA()
    cert = ca.issue_cert("partner.example.com")
    indent = lambda pem: "\n".join("    " + line for line in pem.decode().strip().splitlines())  # noqa: E731
    (folder / "partner.yaml").write_text(f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: partner}}
spec:
  listeners:
    - name: https
      protocol: HTTPS
      port: ${{HTTPS_PORT}}
      hostname: partner.example.com
      tls: {{certificateRefs: [{{name: partner-cert}}]}}
---
apiVersion: v1
kind: Secret
metadata: {{name: partner-cert}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{indent(cert.cert_chain_pems[0].bytes())}
  tls.key: |
{indent(cert.private_key_pem.bytes())}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: partner}}
spec:
  parentRefs: [{{name: partner}}]
  rules:
    - backendRefs: [{{group: meshgate.io, kind: Backend, name: lr}}]
""")
    ca_file = folder.parent / "partner-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca_file


# (method, host, path, headers) -> (status, upstream backend, path the upstream saw)
TABLE = [
    ("GET", None, "/exact", {}, 200, "b", "/exact"),
    ("GET", None, "/exact/more", {}, 404, None, None),
    ("GET", None, "/prefix", {}, 200, "c", "/prefix"),
    ("GET", None, "/prefix/deeper/x", {}, 200, "c", "/prefix/deeper/x"),
    ("GET", None, "/prefixes", {}, 404, None, None),  # prefixes match whole segments only
    ("GET", None, "/items/123", {}, 200, "c", "/items/123"),
    ("GET", None, "/items/abc", {}, 404, None, None),
    ("GET", None, "/hdr", {"x-tenant": "acme"}, 200, "c", "/hdr"),
    ("GET", None, "/hdr", {"x-tenant": "beta-42"}, 200, "lr", "/hdr"),
    ("GET", None, "/hdr", {"x-tenant": "other"}, 200, "b", "/hdr"),
    ("GET", None, "/hdr", {}, 200, "b", "/hdr"),
    ("GET", None, "/q?debug=1", {}, 200, "c", "/q"),
    ("GET", None, "/q?debug=0", {}, 200, "b", "/q"),
    ("POST", None, "/m", {}, 200, "c", "/m"),
    ("GET", None, "/m", {}, 200, "b", "/m"),
    ("DELETE", None, "/m", {}, 200, "b", "/m"),
    ("GET", "api.example.com", "/host", {}, 200, "c", "/host"),
    ("GET", "api.example.com:8080", "/host", {}, 200, "c", "/host"),  # port in Host is ignored
    ("GET", "x.wild.example.com", "/host", {}, 200, "c", "/host"),
    ("GET", "other.example.com", "/host", {}, 200, "b", "/host"),
    ("GET", "api.example.com", "/exact", {}, 404, None, None),  # that host only has /host
    ("GET", None, "/users/42/orders/7", {}, 200, "b", "/v2/orders/7/owner/42"),
    ("GET", None, "/users/42/orders", {}, 404, None, None),
    ("GET", None, "/users/42/orders/7/extra", {}, 404, None, None),
    ("GET", None, "/static/css/site/main.css", {}, 200, "c", "/static/css/site/main.css"),
    ("GET", None, "/old/thing", {}, 200, "b", "/new/thing"),
    ("GET", None, "/strip/thing", {}, 200, "b", "/thing"),
    ("GET", None, "/nothing/here", {}, 404, None, None),
]


@pytest.mark.parametrize("method,host,path,headers,status,backend,seen_path", TABLE,
                         ids=[f"{m} {h or ''}{p} {list(hd.values())}" for m, h, p, hd, *_ in TABLE])
def test_request_table(gw, method, host, path, headers, status, backend, seen_path) -> None:
    resp = request(gw.http, path, method=method, host=host, headers=headers)
    assert resp.status == status, resp.body
    if backend is not None:
        assert resp.upstream.rsplit("-", 1)[0] == backend
        assert resp.json["path"] == seen_path
        assert resp.json["method"] == method


def test_header_filters(gw) -> None:
    resp = request(gw.http, "/headers", headers={"x-set": "from-client", "x-add": "client", "x-secret": "s3cr3t"})
    seen = resp.json["headers"]
    assert seen["x-set"] == "by-gateway"
    assert [v.strip() for v in seen["x-add"].split(",")] == ["client", "added"]
    assert "x-secret" not in seen
    assert resp.headers["x-resp"] == "yes"


def test_host_rewrite(gw) -> None:
    resp = request(gw.http, "/old/x")
    assert resp.json["headers"]["host"] == "rewritten.internal"


def test_redirect(gw) -> None:
    resp = request(gw.http, "/moved/anything")
    assert resp.status == 301
    assert resp.headers["location"] == "https://new.example.com/here"


def test_request_timeout(gw) -> None:
    resp = request(gw.http, "/slow/__sleep/2000")
    assert resp.status == 504
    assert request(gw.http, "/slow/__sleep/10").status == 200


def test_access_log_is_json_with_request_id(gw) -> None:
    """The access log line carries the x-request-id the upstream received, to join the logs."""
    resp = request(gw.http, "/exact")
    assert resp.status == 200
    request_id = resp.json["headers"]["x-request-id"]
    log = Path(gw.status()["envoy"]["access_log"])

    def logged():
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry["request_id"] == request_id:
                return entry
    entry = wait_until(logged, timeout=5, what="access log line")
    assert entry["path"] == "/exact" and entry["response_code"] == 200
    assert entry["route_name"] == "httproute/default/matches/rule/0/match/0"


def test_round_robin_uses_both_instances(gw) -> None:
    seen = collections.Counter(request(gw.http, "/rr").upstream for _ in range(20))
    assert set(seen) == {"a-1", "a-2"}
    assert abs(seen["a-1"] - seen["a-2"]) <= 2  # round robin alternates


def test_weighted_split(gw) -> None:
    n = 800
    seen = collections.Counter(request(gw.http, "/split").upstream for _ in range(n))
    share = seen["b-1"] / n
    # Weights 3:1 -> 75 % to b. With n=800 the standard deviation is ~1.5 %; 6 sigma either side.
    assert 0.66 < share < 0.84, seen
    assert seen["b-1"] + seen["c-1"] == n


def test_ring_hash_pins_a_key_to_one_upstream(gw) -> None:
    for user in ("alice", "bob", "carol", "dave"):
        seen = {request(gw.http, "/hash", headers={"x-user": user}).upstream for _ in range(10)}
        assert len(seen) == 1, (user, seen)
    spread = {request(gw.http, "/hash", headers={"x-user": f"user-{i}"}).upstream for i in range(40)}
    assert len(spread) >= 2  # different keys do land on different upstreams


def test_load_balancers_as_envoy_reports(gw) -> None:
    clusters = {c["cluster"]["name"]: c["cluster"] for c in gw.dump_section("ClustersConfigDump")["dynamic_active_clusters"]}
    # Envoy omits the default (ROUND_ROBIN) from its JSON.
    assert clusters["backend/default/a"].get("lb_policy", "ROUND_ROBIN") == "ROUND_ROBIN"
    assert clusters["backend/default/lr"]["lb_policy"] == "LEAST_REQUEST"
    assert clusters["backend/default/rnd"]["lb_policy"] == "RANDOM"
    assert clusters["backend/default/hash"]["lb_policy"] == "RING_HASH"
    assert clusters["backend/default/mag"]["lb_policy"] == "MAGLEV"
    assert "typed_extension_protocol_options" in clusters["backend/default/grpc"]  # HTTP/2 upstream


def test_config_dump_has_the_acked_version(gw) -> None:
    status = gw.status()
    node = status["nodes"]["edge-local"]
    assert gw.dump_section("ListenersConfigDump")["version_info"] == node["acked"]["Listener"]
    assert gw.dump_section("ClustersConfigDump")["version_info"] == node["acked"]["Cluster"]
    routes = gw.dump_section("RoutesConfigDump")
    assert {r["version_info"] for r in routes["dynamic_route_configs"]} == {node["acked"]["RouteConfiguration"]}
    assert not node["nacked"]
    assert node["in_sync"] is True


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by scripts/setup")
def test_http2_prior_knowledge(gw) -> None:
    out = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_version}",
         f"http://127.0.0.1:{gw.http}/exact"], capture_output=True, text=True, timeout=10)
    body, version = out.stdout.rsplit("\n", 1)
    assert version == "2", out.stderr
    assert json.loads(body)["upstream"] == "b-1"


def test_http2_with_nghttp(gw) -> None:
    """nghttp (nghttp2-client) speaks only HTTP/2: h2c with prior knowledge here."""
    if shutil.which("nghttp") is None:
        pytest.fail("nghttp is missing: scripts/setup installs nghttp2-client")
    out = subprocess.run(["nghttp", "-v", f"http://127.0.0.1:{gw.http}/prefix/h2"], capture_output=True, text=True, timeout=10)
    assert ":status: 200" in out.stdout, out.stdout + out.stderr
    assert '"upstream": "c-1"' in out.stdout


def test_https_with_test_certificate(gw) -> None:
    out = subprocess.run(
        ["curl", "-sS", "--cacert", str(gw.ca), "--resolve", f"secure.example.com:{gw.https}:127.0.0.1",
         "-w", "\n%{http_version}", f"https://secure.example.com:{gw.https}/exact"],
        capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    body, version = out.stdout.rsplit("\n", 1)
    assert version == "2"  # ALPN negotiated h2
    assert json.loads(body)["upstream"] == "b-1"
    plain = subprocess.run(
        ["curl", "-sS", "--http1.1", "--cacert", str(gw.ca), "--resolve", f"api.example.com:{gw.https}:127.0.0.1",
         f"https://api.example.com:{gw.https}/host"], capture_output=True, text=True, timeout=10)
    assert json.loads(plain.stdout)["upstream"] == "c-1"


def test_https_certificate_chosen_by_sni(gw) -> None:
    def curl(host: str, ca: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "--cacert", str(ca), "--resolve", f"{host}:{gw.https}:127.0.0.1",
                               f"https://{host}:{gw.https}/exact"], capture_output=True, text=True, timeout=10)

    partner = curl("partner.example.com", gw.partner_ca)
    assert partner.returncode == 0, partner.stderr  # verified against the partner CA: its own certificate
    assert json.loads(partner.stdout)["upstream"] == "lr-1"  # and its own routes
    assert curl("secure.example.com", gw.partner_ca).returncode != 0  # the other certificate elsewhere
    assert curl("secure.example.com", gw.ca).returncode == 0


def test_grpc_through_grpcroute(gw) -> None:
    from meshgate.devtools import grpc_echo

    async def calls():
        unary = await grpc_echo.call_unary(gw.grpc_target, b"hello")
        server = await grpc_echo.call_server_stream(gw.grpc_target, b"s")
        client = await grpc_echo.call_client_stream(gw.grpc_target, [b"a", b"b"])
        bidi = await grpc_echo.call_bidi(gw.grpc_target, [b"x", b"y"])
        return unary, server, client, bidi

    unary, server, client, bidi = asyncio.run(calls())
    assert unary == b"grpc-1:hello"
    assert server == [b"grpc-1:s"] * 3
    assert client.startswith(b"grpc-1:") and client.endswith(b"ab")
    assert bidi == [b"grpc-1:x", b"grpc-1:y"]
