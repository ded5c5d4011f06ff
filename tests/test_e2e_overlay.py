"""`meshgate run --env prod`: an edit to an overlay file (`routes.prod.yaml`) is a config change
like any other, served by the same Envoy (it used to go unnoticed by the watcher)."""

from __future__ import annotations


import pytest

from harness import Meshgate, free_port, request, wait_until, write

BASE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: {http}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata:
  name: app
  annotations: {{meshgate.io/sample-upstream: echo}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {app}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{value: /base}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
"""

OVERLAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  rules:
    - matches: [{{path: {{value: {path}}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
"""



@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("overlay")
    config = work / "config"
    config.mkdir()
    ports = {"http": free_port(), "app": free_port()}
    write(config / "app.yaml", BASE.format(**ports))
    write(config / "app.prod.yaml", OVERLAY.format(path="/prod-1"))
    mg = Meshgate([str(config)], work, args=["--env", "prod"]).start()
    mg.config_dir, mg.ports = config, ports
    yield mg
    assert mg.stop() == 0, mg.output()


def test_overlay_applies_and_its_edits_reload(gw: Meshgate) -> None:
    port = gw.ports["http"]
    assert request(port, "/prod-1").status == 200 and request(port, "/base").status == 404
    pid = gw.envoy_pid
    write(gw.config_dir / "app.prod.yaml", OVERLAY.format(path="/prod-2"))
    wait_until(lambda: request(port, "/prod-2").status == 200, timeout=10, what="the overlay edit to be served")
    assert request(port, "/prod-1").status == 404 and gw.envoy_pid == pid


def test_removing_the_overlay_falls_back_to_the_base(gw: Meshgate) -> None:
    port = gw.ports["http"]
    (gw.config_dir / "app.prod.yaml").unlink()
    wait_until(lambda: request(port, "/base").status == 200, timeout=10, what="the base route")
