"""The hardened edge (defaults) and ClientTrafficPolicy, through the real Envoy.

One `meshgate run` serves `tests/e2e/edge/`: listener `default` has meshgate's defaults, listener
`tuned` a ClientTrafficPolicy. Requests are sent on raw sockets where a normal client library would
"fix" them first (dot segments, slow headers).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from harness import Meshgate, free_port, request

CONFIG = Path(__file__).parent / "e2e" / "edge"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("edge")
    env = {name: str(free_port()) for name in ("DEFAULT_PORT", "TUNED_PORT", "PUBLIC_PORT", "ADMIN_PORT")}
    mg = Meshgate([str(CONFIG)], work, env=env).start()
    mg.default, mg.tuned = int(env["DEFAULT_PORT"]), int(env["TUNED_PORT"])
    yield mg
    assert mg.stop() == 0, mg.output()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes as they are and read until Envoy closes or answers (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def status_line(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# -- path normalization ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/public/../admin", "/public/%2e%2e/admin", "/public/./../admin"])
def test_dot_segments_cannot_reach_admin_through_the_public_prefix(gw: Meshgate, path: str) -> None:
    # On `default` there is no /admin route: the normalized path /admin matches nothing, so the
    # public upstream never sees a request it would read as /admin.
    response = raw(gw.default, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status_line(response) == 404, response


def test_upstream_sees_the_normalized_path(gw: Meshgate) -> None:
    r = request(gw.default, "/public/a/./b//c/../d")
    assert r.status == 200 and r.upstream == "public-1"
    assert r.json["path"] == "/public/a/b/d"


def test_escaped_slashes_are_redirected_to_the_unescaped_path(gw: Meshgate) -> None:
    # %2F: some upstreams read it as "/", Envoy's routing doesn't; the default makes the client
    # come back with the unescaped path, so every hop routes on the same one.
    response = raw(gw.default, b"GET /public%2F..%2Fadmin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_line(response) in (301, 307, 308), response
    assert b"location: /public/../admin" in response.lower() or b"location: /admin" in response.lower()


def test_admin_is_reachable_where_it_is_routed(gw: Meshgate) -> None:
    r = request(gw.tuned, "/public/../admin/x")
    assert r.status == 200 and r.upstream == "admin-1" and r.json["path"] == "/admin/x"


# -- headers --------------------------------------------------------------------------------------


def test_headers_with_underscores_are_rejected_by_default(gw: Meshgate) -> None:
    response = raw(gw.default, b"GET /public HTTP/1.1\r\nHost: x\r\nx_user: admin\r\nConnection: close\r\n\r\n")
    assert status_line(response) == 400, response


def test_policy_drops_headers_with_underscores_instead(gw: Meshgate) -> None:
    r = request(gw.tuned, "/public", headers={"x_user": "admin", "x-user": "guest"})
    assert r.status == 200
    assert "x_user" not in r.json["headers"] and r.json["headers"]["x-user"] == "guest"


def test_envoy_headers_hidden_by_default_shown_by_policy(gw: Meshgate) -> None:
    assert "x-envoy-upstream-service-time" not in request(gw.default, "/public").headers
    assert "x-envoy-upstream-service-time" in request(gw.tuned, "/public").headers


# -- slow clients, health check ------------------------------------------------------------------


def test_a_slow_client_is_cut_off(gw: Meshgate) -> None:
    """Headers not finished within the policy's requestHeadersTimeout (1 s): Envoy answers 408
    and closes, instead of holding the connection for as long as the client likes."""
    with socket.create_connection(("127.0.0.1", gw.tuned), timeout=10) as s:
        s.sendall(b"GET /public HTTP/1.1\r\nHost: x\r\n")  # ... and never the blank line
        started = time.monotonic()
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - started
    assert status_line(data) == 408, data
    assert elapsed < 9  # cut off by Envoy, not by our own socket timeout (which would raise)


def test_default_listener_keeps_a_patient_client_within_its_10s(gw: Meshgate) -> None:
    # The same 1.5 s pause is fine under the default 10 s request-headers timeout.
    with socket.create_connection(("127.0.0.1", gw.default), timeout=10) as s:
        s.sendall(b"GET /public HTTP/1.1\r\nHost: x\r\n")
        time.sleep(1.5)
        s.sendall(b"Connection: close\r\n\r\n")
        data = s.recv(65536)
    assert status_line(data) == 200, data


def test_health_check_is_answered_by_envoy(gw: Meshgate) -> None:
    r = request(gw.tuned, "/healthz")
    assert r.status == 200 and r.upstream is None  # no upstream answered it
    assert request(gw.default, "/healthz").status == 404  # only where the policy applies


# -- what Envoy runs and what /status says -------------------------------------------------------


def _hcm(gw: Meshgate, port: int) -> dict:
    listeners = gw.dump_section("ListenersConfigDump")["dynamic_listeners"]
    for entry in listeners:
        listener = entry["active_state"]["listener"]
        if listener["address"]["socket_address"]["port_value"] == port:
            chain = listener["filter_chains"][0]
            return next(f["typed_config"] for f in chain["filters"] if f["name"].endswith("http_connection_manager"))
    raise AssertionError(f"no listener on port {port}")


def test_envoy_runs_the_hardened_defaults(gw: Meshgate) -> None:
    hcm = _hcm(gw, gw.default)
    assert hcm["request_headers_timeout"] == "10s" and hcm["stream_idle_timeout"] == "300s"
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    assert hcm["http2_protocol_options"]["max_concurrent_streams"] == 100
    assert hcm["path_with_escaped_slashes_action"] == "UNESCAPE_AND_REDIRECT"
    assert _hcm(gw, gw.tuned)["request_headers_timeout"] == "1s"


def test_policy_status_is_accepted(gw: Meshgate) -> None:
    objects = gw.objects()
    policy = next(o for o in objects if o["kind"] == "ClientTrafficPolicy")
    assert policy["conditions"][0] == {"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}
    lines = (CONFIG / "edge.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text == "kind: ClientTrafficPolicy") - 1  # its apiVersion
    assert policy["origin"] == f"{CONFIG / 'edge.yaml'}:{line}"


def test_envoy_runs_with_the_overload_manager(gw: Meshgate) -> None:
    bootstrap = gw.dump_section("BootstrapConfigDump")["bootstrap"]
    overload = bootstrap["overload_manager"]
    monitors = {m["name"] for m in overload["resource_monitors"]}
    assert monitors == {"envoy.resource_monitors.fixed_heap", "envoy.resource_monitors.global_downstream_max_connections"}
    actions = {a["name"]: a["triggers"][0]["threshold"]["value"] for a in overload["actions"]}
    assert actions == {"envoy.overload_actions.shrink_heap": 0.95, "envoy.overload_actions.stop_accepting_requests": 0.98}
