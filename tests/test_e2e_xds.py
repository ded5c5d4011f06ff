"""`meshgate xds` alone (as it runs in a cluster) with an Envoy started separately from the
bootstrap `meshgate bootstrap` prints: readiness follows the Envoy, traffic flows, and every
config change is logged with what changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import ROOT, free_port, request, wait_until


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("xds")
    config = work / "config"
    config.mkdir()
    http, upstream, xds, status = free_port(), free_port(), free_port(), free_port()
    (config / "edge.yaml").write_text(f"""\
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
""")
    echo = subprocess.Popen([sys.executable, "-m", "meshgate.devtools.upstreams", "--name", "app", "--port", str(upstream)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stderr = (work / "xds.stderr").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "meshgate", "xds", str(config), "--xds-address", f"127.0.0.1:{xds}",
                             "--status-address", f"127.0.0.1:{status}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        status_url = f"http://127.0.0.1:{status}"
        wait_until(lambda: http_status(f"{status_url}/healthz") == 200, timeout=20, what="meshgate xds to start")
        yield {"config": config, "http": http, "status": status_url, "xds": xds, "work": work, "stderr": work / "xds.stderr",
               "start_envoy": lambda: _start_envoy(work, xds)}
    finally:
        for p in (proc, echo):
            p.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        echo.wait(timeout=10)


def _start_envoy(work: Path, xds: int) -> subprocess.Popen:
    from meshgate.envoy.process import find_envoy

    bootstrap = subprocess.run([sys.executable, "-m", "meshgate", "bootstrap", "--xds-address", f"127.0.0.1:{xds}",
                                "--node-id", "edge-test", "--admin-port", "0"], cwd=ROOT, capture_output=True,
                               text=True, timeout=30, check=True).stdout
    (work / "bootstrap.json").write_text(bootstrap)
    return subprocess.Popen([find_envoy(), "-c", str(work / "bootstrap.json"), "--use-dynamic-base-id",
                             "--concurrency", "1", "-l", "warning", "--log-path", str(work / "envoy.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_ready_only_once_an_envoy_acked_then_serves(plane) -> None:
    assert http_status(f"{plane['status']}/readyz") == 503  # a config, but no Envoy yet
    envoy = plane["start_envoy"]()
    try:
        wait_until(lambda: http_status(f"{plane['status']}/readyz") == 200, timeout=20, what="/readyz after Envoy ACKed")
        status = json.loads(urllib.request.urlopen(f"{plane['status']}/status", timeout=5).read())
        assert status["nodes"]["edge-test"]["group"] == "edge"
        resp = wait_until(lambda: (r := request(plane["http"], "/app/x")).status == 200 and r, timeout=10,
                          what="traffic through the separately started Envoy")
        assert resp.upstream == "app"

        # A change is logged as a JSON line naming what was added.
        before = plane["stderr"].read_text()
        (plane["config"] / "more.yaml").write_text((plane["config"] / "edge.yaml").read_text().split("---")[2]
                                                   .replace("name: app}", "name: more}", 1).replace("/app", "/more"))
        wait_until(lambda: request(plane["http"], "/more").status == 200, timeout=10, what="the new route")

        def logged():
            for line in plane["stderr"].read_text()[len(before):].splitlines():
                entry = json.loads(line)
                if entry["msg"] == "config published":
                    return entry
        entry = wait_until(logged, timeout=5, what="the 'config published' log line")
        assert entry["changes"]["RouteConfiguration"] == {"changed": [f"default/edge/{plane['http']}"]}
        assert entry["previous"] and entry["version"] != entry["previous"]
    finally:
        os.killpg(envoy.pid, signal.SIGTERM)
        envoy.wait(timeout=10)
    wait_until(lambda: not json.loads(urllib.request.urlopen(f"{plane['status']}/status", timeout=5).read())["nodes"],
               timeout=10, what="the node to be forgotten after its stream closed")
