"""Per-object validity through the real Envoy: one bad object never blocks another.

One `meshgate run` on a config folder the tests edit. A user must see: an object that was valid
and turns invalid keeps its last valid version serving (and `/status` says so) while edits to
other objects go through; a backendRef that can't be resolved answers its share with HTTP 500;
deleting a ReferenceGrant takes effect live; a rotated certificate is served by the same Envoy
(SDS) without dropping requests.
"""

from __future__ import annotations

import collections
import os
import ssl
from pathlib import Path

import pytest

from harness import Meshgate, free_port, request, wait_until, write, write_tls_files

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners:
    - {{name: http, protocol: HTTP, port: {http}}}
    - name: https
      protocol: HTTPS
      port: {https}
      tls:
        options: {{meshgate.io/certificate-file: tls.crt, meshgate.io/private-key-file: tls.key}}
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata:
  name: app
  annotations: {{meshgate.io/sample-upstream: echo}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {app}}}]
"""

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{value: /{name}}}}}]
      filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-version, value: "{version}"}}]}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
"""

SHARED = """\
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata:
  name: shared
  namespace: infra
  annotations: {{meshgate.io/sample-upstream: echo}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {shared}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: uses-shared}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{value: /shared}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: shared, namespace: infra}}]
"""

GRANT = """\
apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: routes-from-default, namespace: infra}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]
  to: [{group: meshgate.io, kind: Backend}]
"""



@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("partial")
    config = work / "config"
    config.mkdir()
    ports = {"http": free_port(), "https": free_port(), "app": free_port(), "shared": free_port()}
    mg_ca = write_tls_files(config, ["secure.example.com"])
    write(config / "gateway.yaml", GATEWAY.format(**ports))
    write(config / "a.yaml", ROUTE.format(name="a", version="1"))
    write(config / "b.yaml", ROUTE.format(name="b", version="1"))
    write(config / "shared.yaml", SHARED.format(**ports))
    write(config / "grant.yaml", GRANT)
    mg = Meshgate([str(config)], work).start()
    mg.config_dir, mg.ports, mg.ca = config, ports, mg_ca
    yield mg
    assert mg.stop() == 0, mg.output()


def object_status(gw: Meshgate, kind: str, name: str) -> dict:
    return next(o for o in gw.objects() if o["kind"] == kind and o["name"] == name)


def condition(obj: dict, kind: str) -> dict:
    return next(c for c in obj["conditions"] if c["type"] == kind)


def test_invalid_edit_keeps_that_objects_last_valid_version_and_others_proceed(gw: Meshgate) -> None:
    port = gw.ports["http"]
    assert request(port, "/a").headers["x-version"] == "1"
    # Break route a (unknown field) and change route b in the same moment.
    write(gw.config_dir / "a.yaml", ROUTE.format(name="a", version="2").replace("parentRefs", "parentRef"))
    write(gw.config_dir / "b.yaml", ROUTE.format(name="b", version="2"))
    wait_until(lambda: request(port, "/b").headers.get("x-version") == "2", timeout=10, what="route b's edit")
    assert request(port, "/a").headers["x-version"] == "1"  # a's last valid version still serves
    a = object_status(gw, "HTTPRoute", "a")
    assert condition(a, "Accepted")["status"] == "False" and condition(a, "Accepted")["reason"] == "Invalid"
    assert "parentRef" in condition(a, "Accepted")["message"]
    assert condition(a, "Programmed") == {"type": "Programmed", "status": "True", "reason": "LastValidVersion",
                                          "message": condition(a, "Programmed")["message"]}
    assert any("a.yaml" in line and "parentRef" in line for line in gw.status()["last_error"])
    # Fixed: served at the new version, status clean, and the log says so once.
    write(gw.config_dir / "a.yaml", ROUTE.format(name="a", version="3"))
    wait_until(lambda: request(port, "/a").headers.get("x-version") == "3", timeout=10, what="the fixed route a")
    assert condition(object_status(gw, "HTTPRoute", "a"), "Accepted")["status"] == "True"
    wait_until(lambda: gw.status()["last_error"] == [], timeout=5, what="the problem to clear")
    assert "config is valid again" in gw.stderr_path.read_text()


def test_yaml_syntax_error_keeps_the_files_objects(gw: Meshgate) -> None:
    port = gw.ports["http"]
    write(gw.config_dir / "b.yaml", "apiVersion: [unclosed\n")
    wait_until(lambda: any("b.yaml" in e for e in gw.status()["last_error"]), timeout=10, what="the syntax error")
    assert request(port, "/b").status == 200  # still served from its last valid version
    write(gw.config_dir / "b.yaml", ROUTE.format(name="b", version="4"))
    wait_until(lambda: request(port, "/b").headers.get("x-version") == "4", timeout=10, what="route b back")


def test_missing_backend_share_gets_500_and_the_rest_is_served(gw: Meshgate) -> None:
    port = gw.ports["http"]
    split = ROUTE.format(name="split", version="1").replace(
        "backendRefs: [{group: meshgate.io, kind: Backend, name: app}]",
        "backendRefs: [{group: meshgate.io, kind: Backend, name: app}, {group: meshgate.io, kind: Backend, name: nowhere}]")
    write(gw.config_dir / "split.yaml", split)
    wait_until(lambda: request(port, "/split").status in (200, 500), timeout=10, what="/split to be routed")
    counts = collections.Counter(request(port, "/split").status for _ in range(200))
    assert set(counts) == {200, 500}, counts
    assert 60 <= counts[500] <= 140, counts  # half the weight; 200 draws keep this within 6 sigma
    route = object_status(gw, "HTTPRoute", "split")
    assert condition(route, "ResolvedRefs")["reason"] == "BackendNotFound"
    (gw.config_dir / "split.yaml").unlink()


def test_deleting_a_reference_grant_takes_effect_live(gw: Meshgate) -> None:
    port = gw.ports["http"]
    r = request(port, "/shared")
    assert r.status == 200 and r.upstream == "shared-1"
    (gw.config_dir / "grant.yaml").unlink()
    wait_until(lambda: request(port, "/shared").status == 500, timeout=10, what="the cross-namespace ref to be refused")
    assert condition(object_status(gw, "HTTPRoute", "uses-shared"), "ResolvedRefs")["reason"] == "RefNotPermitted"
    write(gw.config_dir / "grant.yaml", GRANT)
    wait_until(lambda: request(port, "/shared").status == 200, timeout=10, what="the grant to admit it again")


def _serial(gw: Meshgate, ca: Path) -> int:
    """Serial number of the certificate Envoy presents for secure.example.com (verified by `ca`)."""
    import socket

    from cryptography import x509

    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", gw.ports["https"]), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="secure.example.com") as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_rotated_certificate_is_served_by_the_same_envoy(gw: Meshgate) -> None:
    """The certificate files change on disk: the new certificate reaches Envoy as an SDS Secret,
    without restarting Envoy or re-creating the listener."""
    from cryptography import x509

    old_serial = _serial(gw, gw.ca)
    pid = gw.envoy_pid
    listener_before = _https_listener_version(gw)
    rotated = gw.config_dir.parent / "rotated"
    rotated.mkdir()
    new_ca = write_tls_files(rotated, ["secure.example.com"])
    new_serial = x509.load_pem_x509_certificate((rotated / "tls.crt").read_bytes()).serial_number
    # Key first, then certificate, each replaced atomically (as cert-manager renewals do).
    os.replace(rotated / "tls.key", gw.config_dir / "tls.key")
    os.replace(rotated / "tls.crt", gw.config_dir / "tls.crt")

    def serves_new() -> bool:
        try:
            return _serial(gw, new_ca) == new_serial
        except ssl.SSLError:
            return False  # still the old certificate
    wait_until(serves_new, timeout=10, what="the new certificate to be served")
    assert new_serial != old_serial and gw.envoy_pid == pid
    assert _https_listener_version(gw) == listener_before  # only the Secret changed
    assert request(gw.ports["http"], "/a").status == 200


def _https_listener_version(gw: Meshgate) -> str:
    for entry in gw.dump_section("ListenersConfigDump")["dynamic_listeners"]:
        if entry["active_state"]["listener"]["address"]["socket_address"]["port_value"] == gw.ports["https"]:
            return entry["active_state"]["version_info"]
    raise AssertionError("no HTTPS listener")
