"""End to end in Kubernetes mode: a fake API server (real wire protocol), `meshgate xds --kubernetes`
with a kubeconfig pointing at it, and a real Envoy started from `meshgate bootstrap`. Objects are
created, changed and deleted in the "cluster" as kubectl would; traffic follows, endpoint changes
reach Envoy without a translation, and an API server restart is recovered from."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter

import pytest
from fake_kube import FakeKube
from harness import ROOT, free_port, request, wait_until
from test_e2e_xds import _start_envoy, http_status

from meshgate.devtools.upstreams import EchoServer

pytestmark = pytest.mark.timeout(120)

GW = "gateway.networking.k8s.io/v1"
SLICE = "discovery.k8s.io/v1"


class Cluster:
    """The fake API server and the sample pods (echo servers), on an event loop of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.kube = FakeKube(bookmark_interval=0.5)
        self.call(self.kube.start())
        self.pods = [EchoServer(f"pod-{i}") for i in range(3)]
        for pod in self.pods:
            self.call(pod.start())

    def call(self, coroutine):  # noqa: ANN001, ANN201
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=20)

    def do(self, function, *args):  # noqa: ANN001, ANN002, ANN201 - a store change, on the loop
        async def run():  # noqa: ANN202
            return function(*args)
        return self.call(run())

    def close(self) -> None:
        for pod in self.pods:
            self.call(pod.stop())
        self.call(self.kube.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def pod_slice(name: str, pod: int, cluster: Cluster) -> dict:
    """An EndpointSlice with one ready pod. Every sample pod listens on its own port, which is
    what a named targetPort (`web`) resolving to another number per slice looks like."""
    return {"apiVersion": SLICE, "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "app"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": cluster.pods[pod].port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]}


def http_route(path: str) -> dict:
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "app"},
            "spec": {"parentRefs": [{"name": "edge"}],
                     "rules": [{"matches": [{"path": {"value": path}}], "backendRefs": [{"name": "app", "port": 80}]}]}}


def translations(status_url: str) -> float:
    text = urllib.request.urlopen(f"{status_url}/metrics", timeout=5).read().decode()  # noqa: S310 - loopback
    return float(re.search(r"^meshgate_translation_seconds_count (\S+)$", text, re.M).group(1))


def served_by(port: int, path: str, n: int = 12) -> Counter:
    return Counter(r.upstream if r.status == 200 else r.status for r in (request(port, path) for _ in range(n)))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("kube")
    cluster = Cluster()
    http = free_port()
    kube = cluster.kube
    cluster.do(kube.create, {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "meshgate"},
                             "spec": {"controllerName": "meshgate.io/gateway-controller"}})
    cluster.do(kube.create, {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "edge"},
                             "spec": {"gatewayClassName": "meshgate", "listeners": [{"name": "http", "protocol": "HTTP", "port": http}]}})
    cluster.do(kube.create, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"},
                             "spec": {"selector": {"app": "app"}, "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}})
    cluster.do(kube.create, pod_slice("app-0", 0, cluster))
    cluster.do(kube.create, http_route("/app"))
    with xds_on(cluster, work, ["--gateway-address", "127.0.0.1"]) as status_url:
        yield {"cluster": cluster, "kube": kube, "http": http, "status": status_url, "stderr": work / "xds.stderr"}


@contextlib.contextmanager
def xds_on(cluster: Cluster, work, args: list[str] = ()):  # noqa: ANN001, ANN201
    """`meshgate xds --kubernetes` on the fake API server and a real Envoy of its group, until
    the block ends (then both stopped by PID, and the cluster closed); yields the status URL."""
    xds, status = free_port(), free_port()
    (work / "kubeconfig").write_text(cluster.kube.kubeconfig())
    stderr = (work / "xds.stderr").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "meshgate", "xds", "--kubernetes", "--kubeconfig", str(work / "kubeconfig"),
                             "--xds-address", f"127.0.0.1:{xds}", "--status-address", f"127.0.0.1:{status}", *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
                            env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"})
    envoy = None
    try:
        status_url = f"http://127.0.0.1:{status}"
        wait_until(lambda: http_status(f"{status_url}/healthz") == 200, timeout=30, what="meshgate xds --kubernetes to start")
        envoy = _start_envoy(work, xds)
        wait_until(lambda: http_status(f"{status_url}/readyz") == 200, timeout=30, what="Envoy to ACK")
        yield status_url
    finally:
        if envoy is not None:
            os.killpg(envoy.pid, signal.SIGTERM)
            envoy.wait(timeout=10)
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=15) == 0, (work / "xds.stderr").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
            cluster.close()


def test_traffic_follows_the_cluster(env) -> None:
    http, cluster, kube = env["http"], env["cluster"], env["kube"]
    wait_until(lambda: request(http, "/app/x").upstream == "pod-0", timeout=15, what="traffic to the Service's pod")

    # Change the route: the new path serves, the old one is gone.
    cluster.do(kube.apply, http_route("/v2"))
    wait_until(lambda: request(http, "/v2/x").status == 200, timeout=10, what="the changed route")
    assert request(http, "/app/x").status == 404

    # Scale up: a second pod (its own slice) joins without any translation; then scale down.
    before = translations(env["status"])
    cluster.do(kube.create, pod_slice("app-1", 1, cluster))
    wait_until(lambda: set(served_by(http, "/v2/x")) == {"pod-0", "pod-1"}, timeout=10, what="both pods to serve")
    cluster.do(kube.remove, SLICE, "EndpointSlice", "app-0")
    wait_until(lambda: set(served_by(http, "/v2/x")) == {"pod-1"}, timeout=10, what="scale down to pod-1")
    assert translations(env["status"]) == before, "endpoint changes went out as EDS alone"

    # The API server restarts (watches break) and meanwhile pod-1 is replaced by pod-2.
    cluster.call(kube.stop())
    cluster.do(kube.remove, SLICE, "EndpointSlice", "app-1")
    cluster.do(kube.create, pod_slice("app-2", 2, cluster))
    cluster.do(kube.compact)
    cluster.call(kube.start())
    wait_until(lambda: set(served_by(http, "/v2/x", 6)) == {"pod-2"}, timeout=20, what="recovery after the restart")

    # Status names cluster objects, not files; deleting the route stops its traffic.
    objects = {(o["kind"], o["name"]): o for o in
               json.loads(urllib.request.urlopen(f"{env['status']}/status/objects", timeout=5).read())}
    assert objects[("HTTPRoute", "app")]["origin"] == "kubernetes:HTTPRoute default/app"
    assert objects[("Gateway", "edge")]["listeners"][0]["attachedRoutes"] == 1
    # Status is written back to the objects (the only replica holds the leader Lease).
    def parents() -> list:
        return (cluster.do(kube.read, GW, "HTTPRoute", "app").get("status") or {}).get("parents", [])

    wait_until(lambda: parents() and parents()[0]["conditions"][0]["status"] == "True", timeout=20,
               what="the route's status.parents")
    assert parents()[0]["controllerName"] == "meshgate.io/gateway-controller"
    gateway_status = cluster.do(kube.read, GW, "Gateway", "edge")["status"]
    assert {c["type"]: c["status"] for c in gateway_status["conditions"]} == {"Accepted": "True", "Programmed": "True"}
    assert gateway_status["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]
    assert gateway_status["listeners"][0]["attachedRoutes"] == 1
    lease = cluster.do(kube.read, "coordination.k8s.io/v1", "Lease", "meshgate-controlplane", "default")
    assert lease["spec"]["holderIdentity"]
    cluster.do(kube.remove, GW, "HTTPRoute", "app")
    wait_until(lambda: request(http, "/v2/x").status == 404, timeout=10, what="the deleted route to stop serving")


def test_an_error_page_from_a_config_map_changes_live(env) -> None:
    """A BackendTrafficPolicy's responseOverride body from a ConfigMap (`valueRef`, as in Envoy
    Gateway): Envoy serves the ConfigMap's value, and an edit to the ConfigMap reaches Envoy
    without touching the policy."""
    http, cluster, kube = env["http"], env["cluster"], env["kube"]
    # A Service with no endpoints: Envoy answers 503 itself, which the policy's page replaces.
    cluster.do(kube.create, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "down"},
                             "spec": {"ports": [{"name": "http", "port": 80}]}})
    cluster.do(kube.create, {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "pages"},
                             "spec": {"parentRefs": [{"name": "edge"}],
                                      "rules": [{"matches": [{"path": {"value": "/down"}}],
                                                 "backendRefs": [{"name": "down", "port": 80}]}]}})
    cluster.do(kube.create, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "error-pages"},
                             "data": {"response.body": '{"error": "down for maintenance"}'}})
    cluster.do(kube.create, {"apiVersion": "meshgate.io/v1alpha1", "kind": "BackendTrafficPolicy",
                             "metadata": {"name": "pages"},
                             "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "pages"}],
                                      "responseOverride": [{
                                          "match": {"statusCodes": [{"type": "Value", "value": 503}]},
                                          "response": {"contentType": "application/json", "body": {
                                              "type": "ValueRef", "valueRef": {"group": "", "kind": "ConfigMap", "name": "error-pages"}}}}]}})
    wait_until(lambda: request(http, "/down").body == b'{"error": "down for maintenance"}', timeout=15,
               what="the ConfigMap's page")
    reply = request(http, "/down")
    assert reply.status == 503 and reply.headers["content-type"] == "application/json"

    cluster.do(kube.apply, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "error-pages"},
                            "data": {"response.body": '{"error": "back at noon"}'}})
    wait_until(lambda: request(http, "/down").body == b'{"error": "back at noon"}', timeout=10,
               what="the edited ConfigMap's page")

    # The ConfigMap deleted: the policy says so in its status, and Envoy's own 503 goes out.
    cluster.do(kube.remove, "v1", "ConfigMap", "error-pages")
    wait_until(lambda: request(http, "/down").body != b'{"error": "back at noon"}', timeout=10,
               what="the page to go with its ConfigMap")
    assert request(http, "/down").status == 503
    objects = {(o["kind"], o["name"]): o for o in
               json.loads(urllib.request.urlopen(f"{env['status']}/status/objects", timeout=5).read())}
    conditions = {c["type"]: c for c in objects[("BackendTrafficPolicy", "pages")]["conditions"]}
    assert conditions["ResolvedRefs"]["status"] == "False"
    assert "ConfigMap default/error-pages not found" in conditions["ResolvedRefs"]["message"]
