"""The Kubernetes provider against a fake API server that speaks the real wire protocol, with the
production client (`kubernetes-asyncio`) unmodified: objects reach the same store and translation
as files, errors name the cluster object, endpoint changes go out as EDS alone, and the informers
recover from a too-old resourceVersion (410) and from an API server restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fake_kube import FakeKube
from kubernetes_asyncio import client

from meshgate.controlplane.pipeline import ControlPlane
from meshgate.providers.kubernetes import KubernetesProvider, api_client
from meshgate.xds.snapshot import CLUSTER, ENDPOINT, ROUTE, SnapshotCache
from meshgate.xds.translator import TranslateOptions

pytestmark = pytest.mark.timeout(60)

GW = "gateway.networking.k8s.io/v1"


def gateway_class(name: str = "meshgate", controller: str = "meshgate.io/gateway-controller") -> dict:
    return {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": name}, "spec": {"controllerName": controller}}


def gateway(name: str = "edge", cls: str = "meshgate", port: int = 8080) -> dict:
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name},
            "spec": {"gatewayClassName": cls, "listeners": [{"name": "http", "protocol": "HTTP", "port": port}]}}


def route(name: str = "app", backend: dict | None = None, path: str = "/", parent: str = "edge") -> dict:
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name},
            "spec": {"parentRefs": [{"name": parent}],
                     "rules": [{"matches": [{"path": {"value": path}}],
                                "backendRefs": [backend or {"name": "app", "port": 80}]}]}}


def service(name: str = "app", ports: list | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "clusterIP": "10.0.0.10",
                     "ports": ports or [{"name": "http", "port": 80, "targetPort": "web"}]}}


def endpoint_slice(name: str, service_name: str, endpoints: list, port: int, port_name: str = "http") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": endpoints}


def ready(ip: str, **conditions) -> dict:  # noqa: ANN003
    return {"addresses": [ip], "conditions": {"ready": True, **conditions}}


async def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def kube(tmp_path: Path):
    fake = await FakeKube(bookmark_interval=0.2).start()
    (tmp_path / "kubeconfig").write_text(fake.kubeconfig())
    fake.kubeconfig_path = str(tmp_path / "kubeconfig")
    yield fake
    await fake.stop()


# -- the fake itself, through the production client ------------------------------------------------


async def test_fake_speaks_the_list_watch_and_status_protocol(kube: FakeKube) -> None:
    for i in range(5):
        kube.create(service(f"s{i}"))
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tok"}, "type": "kubernetes.io/service-account-token"})
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cert"}, "type": "kubernetes.io/tls"})
    api = await api_client(kube.kubeconfig_path)
    async with api:
        core = client.CoreV1Api(api)
        page = await core.list_service_for_all_namespaces(limit=2)
        assert [s.metadata.name for s in page.items] == ["s0", "s1"] and page.metadata._continue
        rest = await core.list_service_for_all_namespaces(limit=10, _continue=page.metadata._continue)
        assert [s.metadata.name for s in rest.items] == ["s2", "s3", "s4"] and not rest.metadata._continue
        secrets = await core.list_secret_for_all_namespaces(field_selector="type=kubernetes.io/tls")
        assert [s.metadata.name for s in secrets.items] == ["cert"]
        # uid, generation and resourceVersion bookkeeping; the status subresource by merge and JSON patch.
        custom = client.CustomObjectsApi(api)
        kube.create(gateway())
        gw = await custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", "default", "gateways", "edge")
        assert gw["metadata"]["generation"] == 1 and gw["metadata"]["uid"]
        patched = await custom.patch_namespaced_custom_object_status(
            "gateway.networking.k8s.io", "v1", "default", "gateways", "edge", {"status": {"conditions": [{"type": "Accepted"}]}},
            _content_type="application/merge-patch+json")
        assert patched["metadata"]["generation"] == 1 and int(patched["metadata"]["resourceVersion"]) > int(gw["metadata"]["resourceVersion"])
        patched = await custom.patch_namespaced_custom_object_status(
            "gateway.networking.k8s.io", "v1", "default", "gateways", "edge",
            [{"op": "replace", "path": "/status/conditions/0/type", "value": "Programmed"}])
        assert patched["status"]["conditions"] == [{"type": "Programmed"}]
        spec = await custom.patch_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", "default", "gateways", "edge", [{"op": "replace", "path": "/spec/listeners/0/port", "value": 9090}])
        assert spec["metadata"]["generation"] == 2 and spec["status"] == patched["status"]  # status kept
        # A watch from a compacted resourceVersion: an ERROR event with a 410 Status.
        rv = gw["metadata"]["resourceVersion"]
        kube.compact()
        resp = await core.list_service_for_all_namespaces(watch=True, resource_version=rv, timeout_seconds=1, _preload_content=False)
        event = json.loads(await resp.content.readline())
        resp.release()
        assert event["type"] == "ERROR" and event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"


# -- the provider ------------------------------------------------------------------------------------


async def test_cluster_objects_are_translated_like_files(kube: FakeKube) -> None:
    kube.create(gateway_class())
    kube.create(gateway_class("other", "example.com/other-controller"))
    kube.create(gateway())
    kube.create(gateway("theirs", cls="other", port=9090))  # another implementation's Gateway
    kube.create(service())
    kube.create(endpoint_slice("app-a", "app", [ready("10.1.0.1"), ready("10.1.0.2", ready=False)], 8080))
    kube.create(endpoint_slice("app-b", "app", [ready("10.1.0.3"),
                                                {"addresses": ["10.1.0.4"], "conditions": {"ready": False, "serving": True, "terminating": True}}],
                               8081))  # a named targetPort may be another number on other pods
    kube.create(route())
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tok"}, "type": "kubernetes.io/service-account-token"})
    provider = KubernetesProvider(kube.kubeconfig_path, sync_timeout=10)
    await provider.start()
    try:
        plane = ControlPlane([], SnapshotCache(), provider=provider, options=TranslateOptions(access_log_path=None))
        plane.reload()
        assert plane.status.last_error == []
        snapshot = plane.snapshot
        assert set(snapshot.resources[CLUSTER]) == {"service/default/app/80"}
        cla = snapshot.resources[ENDPOINT]["service/default/app/80"]
        endpoints = [(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value, e.health_status)
                     for loc in cla.endpoints for e in loc.lb_endpoints]
        # Ready pods serve; the terminating-but-serving one drains (3 = DRAINING); the not-ready one is out.
        assert endpoints == [("10.1.0.1", 8080, 0), ("10.1.0.3", 8081, 0), ("10.1.0.4", 8081, 3)]
        assert [name.split("/")[-1] for name in snapshot.resources[ROUTE]] == ["8080"]  # not the other class's Gateway
        objects = {(o["kind"], o["name"]): o for o in plane.objects_status()}
        assert objects[("HTTPRoute", "app")]["origin"] == "kubernetes:HTTPRoute default/app"
        assert ("Gateway", "theirs") not in objects
        # Secrets are asked for by type: the server never sends service-account tokens.
        secret_lists = [q for m, q in kube.requests if q.startswith("/api/v1/secrets")]
        assert secret_lists and all("fieldSelector=type" in q for q in secret_lists)

        # An invalid object is reported by its origin, and the rest keeps serving.
        changes = provider.changes()
        kube.create(route("bad", path="no-slash"))
        assert "kubernetes:HTTPRoute default/bad" in await asyncio.wait_for(changes.__anext__(), 5)
        plane.reload()
        assert any(line.startswith("kubernetes:HTTPRoute default/bad: spec.rules[0].matches[0].path") for line in plane.status.last_error), plane.status.last_error
        assert "service/default/app/80" in plane.snapshot.resources[CLUSTER]
        await changes.aclose()
    finally:
        await provider.close()


async def test_endpoint_changes_go_out_as_eds_alone_and_informers_recover(kube: FakeKube) -> None:
    kube.create(gateway_class())
    kube.create(gateway())
    kube.create(service())
    kube.create(endpoint_slice("app-a", "app", [ready("10.1.0.1")], 8080))
    kube.create(route())
    provider = KubernetesProvider(kube.kubeconfig_path, sync_timeout=10, max_backoff=0.5)
    await provider.start()
    plane = ControlPlane([], SnapshotCache(), provider=provider, options=TranslateOptions(access_log_path=None))
    plane.reload()
    watcher = asyncio.create_task(plane.watch())
    translations = plane.status.metrics.translation

    def addresses() -> list[str]:
        cla = plane.snapshot.resources[ENDPOINT]["service/default/app/80"]
        return sorted(f"{e.endpoint.address.socket_address.address}:{e.endpoint.address.socket_address.port_value}"
                      for loc in cla.endpoints for e in loc.lb_endpoints)

    try:
        await asyncio.sleep(0.3)  # the first lists' own change batch has been reloaded ("unchanged")
        count = _histogram_count(translations)
        routes = dict(plane.snapshot.resources[ROUTE])
        # Scale up (a second slice), then one pod stops being ready.
        kube.create(endpoint_slice("app-b", "app", [ready("10.1.0.2"), ready("10.1.0.3")], 8080))
        await wait_for(lambda: addresses() == ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"], what="scale up")
        kube.patch(kube.type_of("discovery.k8s.io/v1", "EndpointSlice"), "default", "app-b",
                   [{"op": "replace", "path": "/endpoints/1/conditions/ready", "value": False}], "application/json-patch+json")
        await wait_for(lambda: addresses() == ["10.1.0.1:8080", "10.1.0.2:8080"], what="a pod not ready")
        assert _histogram_count(translations) == count, "an endpoint change must not translate anything"
        assert all(plane.snapshot.resources[ROUTE][n] is m for n, m in routes.items())
        assert plane.status.metrics.endpoint_updates._value.get() >= 2

        # The API server restarts, and its watch history is compacted meanwhile (past the pod's
        # deletion): watching from where they were gets 410 Gone, so the informers list again and
        # find out what changed while they were away.
        slices = next(i for i in provider.informers if i.kind.plural == "endpointslices")
        lists_before = slices.lists
        await kube.stop()
        kube.remove("discovery.k8s.io/v1", "EndpointSlice", "app-b")
        kube.compact()
        await kube.start()
        await wait_for(lambda: addresses() == ["10.1.0.1:8080"], timeout=15, what="recovery after a restart")
        assert slices.lists == lists_before + 1
        await wait_for(lambda: all(i.last_error is None for i in provider.informers), timeout=15,
                       what="every informer to be back")
        # And config changes still reload.
        kube.apply(route(path="/v2"))
        await wait_for(lambda: any(r.match.path_separated_prefix == "/v2" for rc in plane.snapshot.resources[ROUTE].values()
                                   for vh in rc.virtual_hosts for r in vh.routes), what="the route change")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await provider.close()


def _histogram_count(histogram) -> float:  # noqa: ANN001
    return next(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_count"))


def test_file_mode_reads_services_and_endpoint_slices(tmp_path: Path) -> None:
    """A cluster's manifests work unchanged on a laptop: a backendRef to a Service resolves to
    its EndpointSlices' endpoints in files too."""
    import yaml

    from meshgate.api.config import load_translation

    docs = [gateway_class(), gateway(), service(), route(),
            endpoint_slice("app-a", "app", [ready("127.0.0.1"), ready("127.0.0.2", ready=False)], 9001),
            route("wrong-port", backend={"name": "app", "port": 81}, path="/x")]
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump_all([d for d in docs if d["kind"] != "GatewayClass"]))
    translation, errors = load_translation([str(tmp_path)])
    clusters = {c.name: c for c in translation.ir.clusters}
    assert [(e.address, e.port) for e in clusters["service/default/app/80"].endpoints] == [("127.0.0.1", 9001)]
    assert [str(e).split(": ", 1)[1] for e in errors] == [
        "spec.rules[0].backendRefs[0].port: Service default/app has no TCP port 81 (its ports: 80)"]
