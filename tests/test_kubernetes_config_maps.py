"""ConfigMaps in Kubernetes mode, against the fake API server and the production client: only the
ConfigMaps meshgate objects name are held (a cluster's thousands of others cost nothing but their
keys), a reference to one that exists but wasn't held lists them again, one no longer named is let
go, and a change to a named one reaches the translation."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_kube import FakeKube
from test_kubernetes_provider import gateway, gateway_class, route, service, wait_for

from meshgate.controlplane.pipeline import ControlPlane
from meshgate.providers.kubernetes import KubernetesProvider
from meshgate.xds.snapshot import SnapshotCache
from meshgate.xds.translator import TranslateOptions

pytestmark = pytest.mark.timeout(60)

MG = "meshgate.io/v1alpha1"


def config_map(name: str, data: dict, namespace: str = "default") -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": data}


def error_pages(name: str = "pages", config_map_name: str = "error-pages") -> dict:
    """A BackendTrafficPolicy whose 503 page is the ConfigMap's `response.body`."""
    return {"apiVersion": MG, "kind": "BackendTrafficPolicy", "metadata": {"name": name},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "app"}],
                     "responseOverride": [{"match": {"statusCodes": [{"value": 503}]},
                                           "response": {"body": {"type": "ValueRef", "valueRef": {
                                               "group": "", "kind": "ConfigMap", "name": config_map_name}}}}]}}


def page(plane: ControlPlane) -> str | None:
    """The 503 page of route `app`'s rule, as translated."""
    plane.reload()
    for listener in plane.translation.ir.listeners:
        for host in listener.virtual_hosts:
            for r in host.routes:
                if r.shaping is not None and r.shaping.response_overrides:
                    return r.shaping.response_overrides[0].body
    return None


@pytest.fixture
async def kube(tmp_path: Path):
    fake = await FakeKube(bookmark_interval=0.2).start()
    (tmp_path / "kubeconfig").write_text(fake.kubeconfig())
    fake.kubeconfig_path = str(tmp_path / "kubeconfig")
    fake.create(gateway_class())
    fake.create(gateway())
    fake.create(service())
    fake.create(route())
    yield fake
    await fake.stop()


async def test_only_named_config_maps_are_held_and_changes_are_live(kube: FakeKube) -> None:
    for ns in ("default", "team-a", "team-b"):
        kube.create(config_map("kube-root-ca.crt", {"ca.crt": "(the cluster's CA)"}, ns))  # in every namespace
    for i in range(200):
        kube.create(config_map(f"unrelated-{i}", {"settings.json": "x" * 1000}, "team-a"))
    kube.create(config_map("error-pages", {"response.body": "down for maintenance"}))
    kube.create(error_pages())
    provider = KubernetesProvider(kube.kubeconfig_path, sync_timeout=10)
    await provider.start()
    try:
        config_maps = next(i for i in provider.informers if i.kind.plural == "configmaps")
        assert list(config_maps.objects) == [("default", "error-pages")]
        assert len(config_maps.dropped) == 200  # keys only
        lists = [q for m, q in kube.requests if q.startswith("/api/v1/configmaps")]
        assert lists and all("fieldSelector=metadata.name!%3Dkube-root-ca.crt" in q for q in lists), lists
        plane = ControlPlane([], SnapshotCache(), provider=provider, options=TranslateOptions(access_log_path=None))
        assert page(plane) == "down for maintenance"
        assert plane.status.last_error == []

        # An edit to the ConfigMap is an edit to what Envoy serves.
        kube.apply(config_map("error-pages", {"response.body": "back at noon"}))
        await wait_for(lambda: page(plane) == "back at noon", what="the edited page")

        # A policy naming a ConfigMap that exists but wasn't held: listed again, then held.
        lists_before = config_maps.lists
        team_a = error_pages(config_map_name="unrelated-7")
        team_a["metadata"]["namespace"] = "team-a"
        kube.create(team_a)
        await wait_for(lambda: ("team-a", "unrelated-7") in config_maps.objects, what="the newly named ConfigMap")
        assert config_maps.lists == lists_before + 1
        assert sorted(config_maps.objects) == [("default", "error-pages"), ("team-a", "unrelated-7")]

        # No longer named by anybody: let go, and out of the documents.
        kube.remove(MG, "BackendTrafficPolicy", "pages", "team-a")
        await wait_for(lambda: list(config_maps.objects) == [("default", "error-pages")], what="the ConfigMap let go")
        assert not [d for d in provider.load().documents if d.data["metadata"]["name"] == "unrelated-7"]
    finally:
        await provider.close()


async def test_a_missing_config_map_is_reported_and_found_when_created(kube: FakeKube) -> None:
    kube.create(error_pages())
    provider = KubernetesProvider(kube.kubeconfig_path, sync_timeout=10)
    await provider.start()
    try:
        plane = ControlPlane([], SnapshotCache(), provider=provider, options=TranslateOptions(access_log_path=None))
        assert page(plane) is None  # the override is left out; Envoy's own 503 goes out
        assert plane.status.last_error == [
            "kubernetes:BackendTrafficPolicy default/pages: spec.responseOverride[0].response.body.valueRef.name: "
            "ConfigMap default/error-pages not found"]
        # Created afterwards: the watch brings it (it is named, so it is held at once).
        kube.create(config_map("error-pages", {"page.html": "<h1>down</h1>"}))  # the only key is read
        await wait_for(lambda: page(plane) == "<h1>down</h1>", what="the created ConfigMap")
        assert plane.status.last_error == []
    finally:
        await provider.close()


async def test_a_ca_bundle_from_a_config_map(kube: FakeKube) -> None:
    import trustme

    ca = trustme.CA()
    kube.create({"apiVersion": MG, "kind": "Backend", "metadata": {"name": "billing"},
                 "spec": {"endpoints": [{"address": "billing.internal", "port": 443}],
                          "tls": {"caCertificateRefs": [{"kind": "ConfigMap", "name": "internal-ca"}]}}})
    kube.apply(route(backend={"group": "meshgate.io", "kind": "Backend", "name": "billing"}))
    provider = KubernetesProvider(kube.kubeconfig_path, sync_timeout=10)
    await provider.start()
    try:
        plane = ControlPlane([], SnapshotCache(), provider=provider, options=TranslateOptions(access_log_path=None))
        plane.reload()
        assert plane.status.last_error == [
            "kubernetes:Backend default/billing: spec.tls.caCertificateRefs[0].name: ConfigMap default/internal-ca not found"]
        kube.create(config_map("internal-ca", {"ca.crt": ca.cert_pem.bytes().decode()}))

        def trusted() -> bytes | None:
            plane.reload()
            return next((s.ca_pem for s in plane.translation.ir.secrets if s.name.startswith("ca/")), None)

        await wait_for(lambda: trusted() == ca.cert_pem.bytes(), what="the CA bundle")
        assert plane.status.last_error == []
    finally:
        await provider.close()
