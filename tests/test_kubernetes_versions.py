"""ReferenceGrant in both of its versions (`gateway.networking.k8s.io/v1` and `v1beta1`) in
Kubernetes mode, against the fake API server and the production client: a cluster serving only
one of them, both (one stored object, read under either version: one document, not two), neither
(an error, as for a missing CRD), and a version installed or withdrawn while meshgate runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_kube import GATEWAY, FakeKube, ResourceType
from test_kubernetes_provider import endpoint_slice, gateway, gateway_class, ready, route, service, wait_for

from meshgate.controlplane.pipeline import ControlPlane
from meshgate.controlplane.readiness import kubernetes_check
from meshgate.providers.kubernetes import KubernetesProvider
from meshgate.xds.snapshot import SnapshotCache
from meshgate.xds.translator import TranslateOptions

pytestmark = pytest.mark.timeout(60)

V1 = ResourceType(GATEWAY, "v1", "referencegrants", "ReferenceGrant", status_subresource=False)
V1BETA1 = ResourceType(GATEWAY, "v1beta1", "referencegrants", "ReferenceGrant", status_subresource=False)
DENIED = ("kubernetes:HTTPRoute team-a/app: spec.rules[0].backendRefs[0].namespace: Service apps/app is in another "
          "namespace and no ReferenceGrant")


def grant(version: str, name: str = "team-a-to-apps") -> dict:
    """Lets HTTPRoutes of namespace team-a send to Services of namespace apps."""
    return {"apiVersion": f"{GATEWAY}/{version}", "kind": "ReferenceGrant", "metadata": {"name": name, "namespace": "apps"},
            "spec": {"from": [{"group": GATEWAY, "kind": "HTTPRoute", "namespace": "team-a"}],
                     "to": [{"group": "", "kind": "Service"}]}}


async def start_cluster(tmp_path: Path, *, serve: tuple[ResourceType, ...]) -> FakeKube:
    from fake_kube import DEFAULT_RESOURCES

    kinds = [rt for rt in DEFAULT_RESOURCES if rt.plural != "referencegrants"] + list(serve)
    fake = await FakeKube(kinds, bookmark_interval=0.2).start()
    (tmp_path / "kubeconfig").write_text(fake.kubeconfig())
    fake.kubeconfig_path = str(tmp_path / "kubeconfig")
    fake.create(gateway_class())
    gw = gateway()
    gw["spec"]["listeners"][0]["allowedRoutes"] = {"namespaces": {"from": "All"}}
    fake.create(gw)
    fake.create({**service(), "metadata": {"name": "app", "namespace": "apps"}})
    slice_ = endpoint_slice("app-a", "app", [ready("10.1.0.1")], 8080)
    slice_["metadata"]["namespace"] = "apps"
    fake.create(slice_)
    cross = route(backend={"name": "app", "namespace": "apps", "port": 80})
    cross["metadata"]["namespace"] = "team-a"
    cross["spec"]["parentRefs"] = [{"name": "edge", "namespace": "default"}]
    fake.create(cross)
    return fake


def grants_loaded(provider: KubernetesProvider) -> list[str]:
    return sorted(f"{d.data['apiVersion']} {d.file}" for d in provider.load().documents if d.data["kind"] == "ReferenceGrant")


def denied(plane: ControlPlane) -> bool:
    plane.reload()
    return any(line.startswith(DENIED) for line in plane.status.last_error)


@pytest.mark.parametrize("served, version", [((V1,), "v1"), ((V1BETA1,), "v1beta1")])
async def test_a_cluster_serving_one_version_works_and_is_ready(tmp_path: Path, served: tuple, version: str) -> None:
    kube = await start_cluster(tmp_path, serve=served)
    kube.create(grant(version))
    provider = KubernetesProvider(kube.kubeconfig_path, sync_timeout=10, max_backoff=0.5)
    await provider.start()
    try:
        plane = ControlPlane([], SnapshotCache(), provider=provider, options=TranslateOptions(access_log_path=None))
        assert not denied(plane) and plane.status.last_error == []
        assert grants_loaded(provider) == [f"{GATEWAY}/{version} kubernetes:ReferenceGrant apps/team-a-to-apps"]
        # The version the server doesn't serve (404) is neither an error nor a reason to be unready.
        check = kubernetes_check(provider)()
        assert check["ok"] and check["failing"] == {} and check["unsynced"] == [], check
        missing = next(i for i in provider.informers if i.kind.plural == "referencegrants" and i.kind.version != version)
        assert missing.served is False and missing.last_error is None
        # A grant withdrawn takes effect.
        kube.remove(f"{GATEWAY}/{version}", "ReferenceGrant", "team-a-to-apps", "apps")
        await wait_for(lambda: denied(plane), what="the grant's removal")
    finally:
        await provider.close()
        await kube.stop()


async def test_an_object_served_under_both_versions_is_one_grant(tmp_path: Path) -> None:
    kube = await start_cluster(tmp_path, serve=(V1, V1BETA1))
    kube.create(grant("v1beta1"))  # stored as v1beta1, read under v1 too
    provider = KubernetesProvider(kube.kubeconfig_path, sync_timeout=10)
    await provider.start()
    try:
        by_version = {i.kind.version: i for i in provider.informers if i.kind.plural == "referencegrants"}
        assert all(list(i.objects) == [("apps", "team-a-to-apps")] for i in by_version.values())
        # One document (the v1 reading), so no "defined twice" problem, and the route resolves.
        assert grants_loaded(provider) == [f"{GATEWAY}/v1 kubernetes:ReferenceGrant apps/team-a-to-apps"]
        plane = ControlPlane([], SnapshotCache(), provider=provider, options=TranslateOptions(access_log_path=None))
        plane.reload()
        assert plane.status.last_error == []
        assert [o["kind"] for o in plane.objects_status()].count("ReferenceGrant") == 1
        kube.remove(f"{GATEWAY}/v1", "ReferenceGrant", "team-a-to-apps", "apps")
        await wait_for(lambda: not grants_loaded(provider) and denied(plane), what="the grant's deletion")
    finally:
        await provider.close()
        await kube.stop()


async def test_a_version_installed_then_the_old_one_withdrawn(tmp_path: Path) -> None:
    """A Gateway API upgrade while meshgate runs: v1 appears (found on the next poll), then v1beta1
    stops being served; the grant never stops applying, and the informers end up ready."""
    kube = await start_cluster(tmp_path, serve=(V1BETA1,))
    kube.create(grant("v1beta1"))
    provider = KubernetesProvider(kube.kubeconfig_path, sync_timeout=10, max_backoff=0.3)
    await provider.start()
    try:
        plane = ControlPlane([], SnapshotCache(), provider=provider, options=TranslateOptions(access_log_path=None))
        assert not denied(plane)
        kube.add_resource(V1)
        await wait_for(lambda: grants_loaded(provider) == [f"{GATEWAY}/v1 kubernetes:ReferenceGrant apps/team-a-to-apps"],
                       what="v1 to be read")
        kube.remove_resource(V1BETA1)
        old = next(i for i in provider.informers if i.kind.plural == "referencegrants" and i.kind.version == "v1beta1")
        await wait_for(lambda: old.served is False and kubernetes_check(provider)()["ok"], what="v1beta1 to be dropped")
        assert grants_loaded(provider) == [f"{GATEWAY}/v1 kubernetes:ReferenceGrant apps/team-a-to-apps"]
        assert not denied(plane)
    finally:
        await provider.close()
        await kube.stop()


async def test_neither_version_served_is_reported(tmp_path: Path) -> None:
    kube = await start_cluster(tmp_path, serve=())
    provider = KubernetesProvider(kube.kubeconfig_path, sync_timeout=2, max_backoff=0.3)
    await provider.start()
    try:
        await wait_for(lambda: len(kubernetes_check(provider)()["failing"]) == 2, what="both versions failing")
        check = kubernetes_check(provider)()
        assert not check["ok"]
        assert all("404" in e and "is the CRD installed?" in e for e in check["failing"].values()), check
        assert sorted(check["failing"]) == ["referencegrants.gateway.networking.k8s.io/v1",
                                            "referencegrants.gateway.networking.k8s.io/v1beta1"]
    finally:
        await provider.close()
        await kube.stop()
