"""A Service's pods scaling from 3 to 30 and back under load, in Kubernetes mode, lose no request.

The fake API server (real wire protocol) holds one EndpointSlice per pod; `meshgate xds
--kubernetes` sends Envoy the endpoints as EDS alone. A request loop runs throughout. Scaling up
creates 27 slices; scaling down first marks those pods terminating (`ready: false`, `serving:
true`, `terminating: true`, as the kubelet does while a pod drains), then deletes their slices,
and only then stops the pods: the order Kubernetes follows, so a request in flight to a draining
pod still completes. Every request must get 200, and no route is translated again."""

from __future__ import annotations

import time

import pytest
from test_e2e_kubernetes import GW, SLICE, Cluster, translations, xds_on

from harness import RequestLoop, free_port, request, wait_until
from meshgate.devtools.upstreams import EchoServer

pytestmark = pytest.mark.timeout(180)

PODS = 30


def pod_slice(cluster: Cluster, pod: int, *, terminating: bool = False) -> dict:
    conditions = ({"ready": False, "serving": True, "terminating": True} if terminating else {"ready": True})
    return {"apiVersion": SLICE, "kind": "EndpointSlice",
            "metadata": {"name": f"scale-{pod}", "labels": {"kubernetes.io/service-name": "scale"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": cluster.pods[pod].port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": conditions}]}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("kube-scale")
    cluster = Cluster()
    more = [EchoServer(f"pod-{i}") for i in range(len(cluster.pods), PODS)]
    for pod in more:
        cluster.call(pod.start())
    cluster.pods += more
    http = free_port()
    kube = cluster.kube
    cluster.do(kube.create, {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "meshgate"},
                             "spec": {"controllerName": "meshgate.io/gateway-controller"}})
    cluster.do(kube.create, {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "edge"},
                             "spec": {"gatewayClassName": "meshgate", "listeners": [{"name": "http", "protocol": "HTTP", "port": http}]}})
    cluster.do(kube.create, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "scale"},
                             "spec": {"selector": {"app": "scale"}, "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}})
    for pod in range(3):
        cluster.do(kube.create, pod_slice(cluster, pod))
    cluster.do(kube.create, {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "scale"},
                             "spec": {"parentRefs": [{"name": "edge"}],
                                      "rules": [{"backendRefs": [{"name": "scale", "port": 80}]}]}})
    with xds_on(cluster, work) as status_url:
        yield {"cluster": cluster, "kube": kube, "http": http, "status": status_url}


def serving(loop: RequestLoop, since: float) -> set:
    return {upstream for _, status, upstream in loop.since(since) if status == 200}


def test_scaling_from_3_to_30_and_back_under_load_loses_no_request(env) -> None:
    http, cluster, kube = env["http"], env["cluster"], env["kube"]
    first = {f"pod-{i}" for i in range(3)}
    wait_until(lambda: {request(http, "/x").upstream for _ in range(12)} == first, timeout=15, what="the first 3 pods")
    before = translations(env["status"])
    everyone = {f"pod-{i}" for i in range(PODS)}
    with RequestLoop(http, "/x") as loop:
        time.sleep(0.3)
        up = time.monotonic()
        for pod in range(3, PODS):  # 27 pods start, one slice each (as the EndpointSlice controller does)
            cluster.do(kube.create, pod_slice(cluster, pod))
        wait_until(lambda: serving(loop, up) == everyone, timeout=30, what="all 30 pods to serve")

        # Scale down: drain (terminating, still serving), then remove, then stop the pods.
        for pod in range(3, PODS):
            cluster.do(kube.apply, pod_slice(cluster, pod, terminating=True))
        drained = time.monotonic()
        wait_until(lambda: (t := time.monotonic()) - drained > 0.5 and serving(loop, t - 0.5) <= first, timeout=30,
                   what="the terminating pods to get no new requests")
        for pod in range(3, PODS):
            cluster.do(kube.remove, SLICE, "EndpointSlice", f"scale-{pod}")
        removed = time.monotonic()
        wait_until(lambda: len(loop.since(removed)) >= 50, timeout=30, what="requests after the removal")
        for pod in cluster.pods[3:]:
            cluster.call(pod.stop())
        stopped = time.monotonic()
        wait_until(lambda: len(loop.since(stopped)) >= 50, timeout=30, what="requests after the pods stopped")
    failures = [r for r in loop.results if r[1] != 200]
    assert not failures, f"{len(failures)} of {len(loop.results)} requests failed: {failures[:5]}"
    assert serving(loop, stopped) <= first
    assert len(loop.results) > 300, len(loop.results)
    assert translations(env["status"]) == before, "scaling went out as EDS alone"
