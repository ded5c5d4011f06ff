"""HTTPRoute `CORS` and `RequestMirror` filters, through the real Envoy.

CORS: Envoy's cors filter answers preflights itself (the upstream never sees them) and adds the
Access-Control-* headers for allowed origins only. RequestMirror: the mirror Backend is a
recording server run by this test, so the copies Envoy sends can be counted.
"""

from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from harness import Meshgate, ThreadedHTTPServer, free_port, request, wait_until, write

CONFIG = Path(__file__).parent / "e2e" / "cors-mirror"
ALLOWED = "https://app.example"


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []  # (path, Host) of every request, shared by the server's threads
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        with self.lock:
            self.seen.append((self.path, self.headers.get("Host", "")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    with ThreadedHTTPServer(_Recorder) as shadow:
        env = {"HTTP_PORT": str(free_port()), "APP_PORT": str(free_port()), "SHADOW_PORT": str(shadow.port)}
        work = tmp_path_factory.mktemp("cors-mirror")
        config = work / "config"
        shutil.copytree(CONFIG, config)
        mg = Meshgate([str(config)], work, env=env)
        mg.config_dir = config
        try:
            mg.start()
            mg.port = int(env["HTTP_PORT"])
            yield mg
            assert mg.stop() == 0, mg.output()
        finally:
            mg.stop()


def preflight(gw: Meshgate, path: str, origin: str, method: str = "PUT"):
    return request(gw.port, path, method="OPTIONS",
                   headers={"Origin": origin, "Access-Control-Request-Method": method,
                            "Access-Control-Request-Headers": "authorization"})


# -- CORS -------------------------------------------------------------------------------------------


def test_preflight_from_an_allowed_origin_is_answered_by_envoy(gw: Meshgate) -> None:
    r = preflight(gw, "/api/items", ALLOWED)
    assert r.status == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert r.headers["access-control-allow-methods"] == "GET,PUT"
    assert r.headers["access-control-allow-headers"] == "authorization"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-max-age"] == "600"
    assert r.upstream is None  # never reached the upstream


def test_preflight_from_another_origin_gets_no_cors_headers(gw: Meshgate) -> None:
    r = preflight(gw, "/api/items", "https://evil.example")
    assert r.upstream is None  # answered by Envoy too, not forwarded
    assert "access-control-allow-origin" not in r.headers, r.headers


def test_actual_request_gets_cors_headers_for_allowed_origins_only(gw: Meshgate) -> None:
    ok = request(gw.port, "/api/items", headers={"Origin": ALLOWED})
    assert ok.status == 200 and ok.upstream == "app-1"
    assert ok.headers["access-control-allow-origin"] == ALLOWED
    assert ok.headers["access-control-expose-headers"] == "x-upstream"
    assert ok.headers["access-control-allow-credentials"] == "true"
    other = request(gw.port, "/api/items", headers={"Origin": "https://evil.example"})
    assert other.status == 200  # CORS is enforced by the browser; Envoy just doesn't allow it
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("origin, allowed", [
    ("https://shop.partner.example", True),
    ("https://a.b.partner.example", True),  # `*` spans any number of labels
    ("https://SHOP.Partner.Example", True),  # hosts are case-insensitive
    ("https://partner.example", False),  # `*.` needs at least one label
    ("https://shop.partner.example.evil.test", False),
    ("http://shop.partner.example", False),  # another scheme is another origin
])
def test_wildcard_origins(gw: Meshgate, origin: str, allowed: bool) -> None:
    r = preflight(gw, "/api/items", origin, method="GET")
    assert ("access-control-allow-origin" in r.headers) is allowed, r.headers
    if allowed:
        assert r.headers["access-control-allow-origin"] == origin


def test_routes_without_cors_pass_preflights_to_the_upstream(gw: Meshgate) -> None:
    r = preflight(gw, "/plain/x", ALLOWED)
    assert r.upstream == "app-1"
    assert r.json["method"] == "OPTIONS"
    assert "access-control-allow-origin" not in r.headers


# -- RequestMirror ---------------------------------------------------------------------------------


def _mirrored(prefix: str) -> list[tuple[str, str]]:
    with _Recorder.lock:
        return [s for s in _Recorder.seen if s[0].startswith(prefix)]


def test_every_request_is_mirrored(gw: Meshgate) -> None:
    for i in range(5):
        r = request(gw.port, f"/mirror-all/{i}")
        assert r.status == 200 and r.upstream == "app-1"  # the client gets the primary's answer
    seen = wait_until(lambda: len(_mirrored("/mirror-all/")) == 5 and _mirrored("/mirror-all/"),
                      what="5 mirrored copies")
    assert sorted(p for p, _ in seen) == [f"/mirror-all/{i}" for i in range(5)]
    # Envoy marks the copy's Host, so the mirror can tell copies from real traffic.
    assert all(host.rsplit(":", 1)[0].endswith("-shadow") for _, host in seen), seen


def test_a_percentage_is_mirrored(gw: Meshgate) -> None:
    total = 200
    for i in range(total):
        assert request(gw.port, f"/mirror-quarter/{i}").status == 200
    # The copies of the last requests may still be on their way: wait until the count is steady.
    counts: list[int] = []

    def steady() -> bool:
        counts.append(len(_mirrored("/mirror-quarter/")))
        return len(counts) >= 5 and len(set(counts[-5:])) == 1

    wait_until(steady, interval=0.05, what="mirrored copies to stop arriving")
    # 25% of 200 = 50; 20..80 is about five standard deviations either side.
    assert 20 <= counts[-1] <= 80, counts[-1]


def test_a_mirror_that_cant_be_resolved_is_left_out_and_reported(gw: Meshgate) -> None:
    # Added by a hot edit: `meshgate run` refuses to start on a config with problems.
    write(gw.config_dir / "broken-mirror.yaml", """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken-mirror}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /mirror-missing}}]
      filters:
        - type: RequestMirror
          requestMirror:
            backendRef: {group: meshgate.io, kind: Backend, name: nowhere}
      backendRefs: [{group: meshgate.io, kind: Backend, name: app}]
""")
    r = wait_until(lambda: (r := request(gw.port, "/mirror-missing/x")).status == 200 and r, what="the new route")
    assert r.upstream == "app-1"  # the rule serves; only its mirror is left out
    route = next(o for o in gw.objects() if o["kind"] == "HTTPRoute" and o["name"] == "broken-mirror")
    resolved = next(c for c in route["conditions"] if c["type"] == "ResolvedRefs")
    assert resolved["status"] == "False" and resolved["reason"] == "BackendNotFound"
    assert "nowhere" in resolved["message"]
