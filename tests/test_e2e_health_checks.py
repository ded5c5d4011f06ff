"""Custom health checks (`--health-check`) through `meshgate run`: each shows in /readyz with its
target, last check and error; a failing gating check makes the control plane unready (503, the
reason naming the check) and ready again once it passes; an `optional` one only degrades it; and
/healthz never depends on them. Bad flags stop the start with a message naming the flag."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from harness import Meshgate, ThreadedHTTPServer, free_port, wait_until, write
from test_cli import meshgate

CONFIG = Path(__file__).parent / "e2e" / "audit"  # any small config with a listener will do


class _Dependency(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    with ThreadedHTTPServer(_Dependency) as dependency:
        work = tmp_path_factory.mktemp("health")
        shutil.copytree(CONFIG, work / "config")
        closed = free_port()  # nothing listens there
        env = {"HTTP_PORT": str(free_port()), "APP_PORT": str(free_port()), "KEY_A": "k",
               "MESHGATE_DEPENDENCY_CHECK_INTERVAL": "0.2"}  # the upstream health below follows quickly
        mg = Meshgate([str(work / "config")], work, env=env, args=[
            "--health-check", f"billing-db=http://127.0.0.1:{dependency.port}/health,interval=0.2",
            "--health-check", f"cache=tcp://127.0.0.1:{closed},optional,interval=0.2"])
        mg.closed = closed
        mg.config_dir = work / "config"
        try:
            mg.start()
            yield mg
            assert mg.stop() == 0, mg.output()
        finally:
            mg.stop()


def get(gw: Meshgate, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(gw.status_url + path, timeout=5) as resp:
            code, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        code, body = exc.code, exc.read()
    return code, json.loads(body) if body.startswith(b"{") else {}


def test_checks_show_in_readyz_and_gate_unless_optional(gw: Meshgate) -> None:
    code, body = wait_until(lambda: (lambda r: r if r[0] == 200 else None)(get(gw, "/readyz")), timeout=10,
                            what="ready")
    deps = body["checks"]["dependencies"]
    db, cache = deps["billing-db"], deps["cache"]
    assert db["ok"] and db["gating"] and db["error"] is None and db["last_check"], db
    assert not cache["ok"] and not cache["gating"] and cache["target"] == f"tcp://127.0.0.1:{gw.closed}", cache
    assert cache["error"], cache  # e.g. "Connect call failed"

    _Dependency.status = 503
    try:
        code, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(get(gw, "/readyz")), timeout=10,
                                what="unready while billing-db fails")
        assert body["checks"]["dependencies"]["billing-db"]["error"] == "HTTP 503", body
        assert get(gw, "/healthz")[0] == 200  # liveness never depends on a dependency
    finally:
        _Dependency.status = 200
    wait_until(lambda: get(gw, "/readyz")[0] == 200, timeout=10, what="ready again")


@pytest.mark.parametrize("flag, message", [
    ("db", "expected NAME=URL"),
    ("db=ftp://x", "must start with http://, https:// or tcp://"),
    ("db=tcp://host", "expected tcp://HOST:PORT"),
    ("db=http://x,sometimes", "unknown option 'sometimes'"),
    ("db=http://x,interval=0", "interval must be 0.1 to 3600 seconds"),
    ("kubernetes=http://x", "the name 'kubernetes' is taken"),
])
def test_a_bad_health_check_flag_stops_the_start(flag: str, message: str, tmp_path: Path) -> None:
    out = meshgate("run", str(CONFIG), "--health-check", flag, cwd=tmp_path)
    assert out.returncode == 2 and "--health-check" in out.stderr and message in out.stderr, out.stderr


def test_upstream_health_from_envoys_view(gw: Meshgate) -> None:
    """/readyz `upstreams`: each Backend's healthy endpoints as Envoy sees them. A Backend whose
    only endpoint fails its health checks is named, and the gateway stays ready (degraded)."""
    wait_until(lambda: get(gw, "/readyz")[1]["checks"]["dependencies"]["upstreams"]["ok"], timeout=10,
               what="the upstreams check")
    up = get(gw, "/readyz")[1]["checks"]["dependencies"]["upstreams"]
    assert up["gating"] is False and up["clusters"] and all(c["healthy"] >= 1 for c in up["clusters"].values()), up
    write(gw.config_dir / "down.yaml", f"""\
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: down}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {gw.closed}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: down}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{value: /down}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: down}}]
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: down-health}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: down}}]
  healthCheck:
    active: {{type: TCP, interval: 200ms, unhealthyThreshold: 1}}
""")
    try:
        code, body = wait_until(lambda: (r := get(gw, "/readyz")) and not r[1]["checks"]["dependencies"]["upstreams"]["ok"]
                                and r, timeout=15, what="the down backend in /readyz")
        up = body["checks"]["dependencies"]["upstreams"]
        # The cluster the health-checked route uses (the policy's variant of the Backend's cluster)
        [(name, counts)] = [(n, c) for n, c in up["clusters"].items() if n.startswith("backend/default/down/")]
        assert counts == {"healthy": 0, "total": 1} and f"{name} (1 endpoint(s))" in up["error"], up
        assert code == 200 and body["ready"] is True  # not gating: the other routes still work
    finally:
        (gw.config_dir / "down.yaml").unlink()
    wait_until(lambda: get(gw, "/readyz")[1]["checks"]["dependencies"]["upstreams"]["ok"], timeout=15,
               what="healthy again once the backend is gone")
