"""Hot reload through the real Envoy, over both xDS variants (state of the world and delta).

Each variant runs one `meshgate run` on a config folder that the tests edit while a client keeps
sending requests. A user must see: new routes served without restarting Envoy, no failed request
during the change, a bad edit reported (same lines as `meshgate validate`) while the last good
config keeps serving, an Envoy NACK recorded without a resend loop, and a clean stop.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import threading
import time
import urllib.request

import pytest

from harness import Meshgate, free_port, pid_alive, request, wait_until, write

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners:
    - {{name: http, protocol: HTTP, port: {http}}}
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata:
  name: stable
  annotations: {{meshgate.io/sample-upstream: echo}}
spec:
  connectTimeout: {connect_timeout}
  endpoints: [{{address: 127.0.0.1, port: {stable}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: stable}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{value: /stable}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: stable}}]
"""

NEW_ROUTE = """\
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata:
  name: {name}
  annotations: {{meshgate.io/sample-upstream: echo}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {fresh}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {path}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: {name}}}]
"""



class LoadLoop:
    """Sends requests to a path in a loop on a background thread and records every status."""

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path
        self.statuses: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 60  # bounded even if stop() is never called
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.statuses.append(request(self.port, self.path, timeout=5).status)
            except OSError as exc:
                self.statuses.append(repr(exc))

    def __enter__(self) -> LoadLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module", params=["sotw", "delta"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp(f"reload-{request.param}")
    config = work / "config"
    config.mkdir()
    ports = {"http": free_port(), "stable": free_port(), "fresh": free_port()}
    write(config / "gateway.yaml", GATEWAY.format(connect_timeout="5s", **ports))
    args = ["--delta"] if request.param == "delta" else []
    mg = Meshgate([str(config)], work, args=args).start()
    mg.config_dir, mg.ports, mg.mode = config, ports, request.param
    yield mg
    # Stopping: SIGTERM ends meshgate, Envoy and the sample upstreams; nothing is left behind.
    envoy_pid = mg.envoy_pid
    assert mg.stop() == 0, mg.output()
    assert not pid_alive(envoy_pid)
    for port in (ports["http"], ports["stable"], ports["fresh"]):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_new_route_and_backend_served_without_restart_or_errors(gw) -> None:
    assert request(gw.ports["http"], "/stable").status == 200
    pid = gw.envoy_pid
    version = gw.status()["config_version"]
    with LoadLoop(gw.ports["http"], "/stable") as loop:
        time.sleep(0.3)
        write(gw.config_dir / "fresh.yaml", NEW_ROUTE.format(name="fresh", fresh=gw.ports["fresh"], path="{value: /fresh}"))
        resp = wait_until(lambda: (r := request(gw.ports["http"], "/fresh")).status == 200 and r, timeout=10,
                          what="the new route to be served")
        assert resp.upstream == "fresh-1"
        # Change the stable Backend's cluster (not its endpoints) under load: Envoy must finish
        # warming the changed cluster, which needs a fresh EDS response (envoy#13009).
        write(gw.config_dir / "gateway.yaml", GATEWAY.format(connect_timeout="3s", **gw.ports))
        wait_until(lambda: _connect_timeout(gw, "backend/default/stable") == "3s", timeout=10,
                   what="the changed cluster to be active")
        time.sleep(0.3)
    assert loop.statuses, "the load loop sent nothing"
    assert set(loop.statuses) == {200}, [s for s in loop.statuses if s != 200][:5]
    assert gw.envoy_pid == pid, "Envoy was restarted"
    assert gw.status()["config_version"] != version
    assert request(gw.ports["http"], "/stable").status == 200


def _connect_timeout(gw, name: str) -> str | None:
    for c in gw.dump_section("ClustersConfigDump").get("dynamic_active_clusters", []):
        if c["cluster"]["name"] == name:
            return c["cluster"]["connect_timeout"]
    return None


def test_switching_a_route_to_a_new_backend_drops_nothing(gw) -> None:
    """Rename the Backend a route uses: the old cluster may only go once no route needs it
    (make-before-break), or requests in between would get 503 'no cluster'."""
    renamed = GATEWAY.format(connect_timeout="3s", **gw.ports).replace("name: stable\n", "name: stable-v2\n").replace(
        "kind: Backend, name: stable}", "kind: Backend, name: stable-v2}")
    assert "stable-v2" in renamed
    with LoadLoop(gw.ports["http"], "/stable") as loop:
        time.sleep(0.3)
        write(gw.config_dir / "gateway.yaml", renamed)
        wait_until(lambda: _connect_timeout(gw, "backend/default/stable-v2") == "3s"
                   and _connect_timeout(gw, "backend/default/stable") is None, timeout=10,
                   what="the new cluster in and the old one out")
        time.sleep(0.3)
        write(gw.config_dir / "gateway.yaml", GATEWAY.format(connect_timeout="3s", **gw.ports))
        wait_until(lambda: _connect_timeout(gw, "backend/default/stable-v2") is None, timeout=10,
                   what="the switch back")
        time.sleep(0.3)
    assert set(loop.statuses) == {200}, collections.Counter(loop.statuses)


def test_removed_route_stops_being_served(gw) -> None:
    write(gw.config_dir / "gone.yaml", NEW_ROUTE.format(name="gone", fresh=gw.ports["fresh"], path="{value: /gone}"))
    wait_until(lambda: request(gw.ports["http"], "/gone").status == 200, timeout=10, what="/gone to be served")
    (gw.config_dir / "gone.yaml").unlink()
    wait_until(lambda: request(gw.ports["http"], "/gone").status == 404, timeout=10, what="/gone to be removed")
    assert request(gw.ports["http"], "/stable").status == 200


def settled(gw) -> dict:
    """Wait until every stage of the last change is published and every Envoy runs it."""
    def done():
        status = gw.status()
        return not status["pending_stages"] and all(n["in_sync"] for n in status["nodes"].values()) and status
    try:
        return wait_until(done, timeout=10, what="the last change to be rolled out")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; status: {gw.status()}") from None


def test_invalid_edit_keeps_last_good_config(gw) -> None:
    good = settled(gw)["config_version"]
    stderr_before = gw.stderr_path.read_text()
    broken = gw.config_dir / "broken.yaml"
    write(broken, "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: broken}\n"
                  "spec:\n  parentRefs: [{name: edge}]\n  rules:\n    - backendRefs: [{name: stable, wieght: 1}]\n")
    line = f"{broken}:7: spec.rules[0].backendRefs[0].wieght: unknown field"
    wait_until(lambda: line in gw.stderr_path.read_text()[len(stderr_before):], timeout=10,
               what="the validation error on stderr")
    status = gw.status()
    assert status["config_version"] == good
    assert any("wieght: unknown field" in e for e in status["last_error"])
    metrics = urllib.request.urlopen(f"{gw.status_url}/metrics", timeout=5).read().decode()
    assert re.search(r"^meshgate_config_errors 1\.0$", metrics, re.M)
    assert request(gw.ports["http"], "/stable").status == 200  # still serving
    # The next edit is retried: fixing the file publishes again.
    write(broken, "# fixed: nothing here\n")
    wait_until(lambda: gw.status()["last_error"] == [], timeout=10, what="the error to clear")
    assert request(gw.ports["http"], "/stable").status == 200


def test_envoy_nack_is_recorded_and_not_resent(gw) -> None:
    """A listener on a port another process holds: valid config, but Envoy can't bind and NACKs."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    nack = gw.config_dir / "taken.yaml"
    try:
        write(nack, "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: taken}\n"
                    f"spec:\n  listeners:\n    - {{name: http, protocol: HTTP, port: {taken}}}\n")

        def nacked():
            node = next(iter(gw.status()["nodes"].values()))
            return node["nacked"].get("Listener")
        rejected = wait_until(nacked, timeout=10, what="Envoy's NACK to show in /status")
        assert "Address already in use" in rejected["error"]
        # ... and on the object whose listener Envoy refused, and in last_error.
        gateway = next(o for o in gw.status()["objects"] if o["kind"] == "Gateway" and o["name"] == "taken")
        programmed = next(c for c in gateway["conditions"] if c["type"] == "Programmed")
        assert programmed["status"] == "False" and programmed["reason"] == "Rejected"
        assert "Address already in use" in programmed["message"]
        assert any("rejected Listener" in line for line in gw.status()["last_error"])
        edge = next(o for o in gw.objects() if o["kind"] == "Gateway" and o["name"] == "edge")
        assert next(c for c in edge["conditions"] if c["type"] == "Programmed")["status"] == "True"

        def metric(name: str) -> str:
            text = urllib.request.urlopen(f"{gw.status_url}/metrics", timeout=5).read().decode()
            return re.search(rf'^{name}{{type="Listener"}} (\S+)$', text, re.M).group(1)
        assert float(metric("meshgate_xds_nacks_total")) >= 1
        pushes = metric("meshgate_xds_pushes_total")
        time.sleep(1.0)  # a resend loop would push many times in a second
        assert metric("meshgate_xds_pushes_total") == pushes
        assert request(gw.ports["http"], "/stable").status == 200  # the other listener still serves
    finally:
        holder.close()
    nack.unlink()
    wait_until(lambda: not nacked(), timeout=10, what="the next good config to be ACKed")


def test_envoy_crash_is_restarted_and_gets_the_config_again(gw) -> None:
    """Envoy killed outright: meshgate restarts it, it reconnects over ADS and serves the same
    routes; /status shows the new PID. (Last in the module: the teardown checks that PID.)"""
    old = gw.status()["envoy"]
    os.kill(old["pid"], signal.SIGKILL)
    new = wait_until(lambda: (e := gw.status()["envoy"])["pid"] not in (None, old["pid"]) and e, timeout=20,
                     what="a new Envoy")
    assert new["restarts"] == old["restarts"] + 1
    wait_until(lambda: request(gw.ports["http"], "/stable").status == 200, timeout=20, what="the new Envoy to serve")
    settled(gw)
