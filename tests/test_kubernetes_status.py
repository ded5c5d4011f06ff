"""Status written back to Kubernetes objects, as Gateway API requires, against the fake API server
with the production client: conditions with Gateway API reasons for valid, partly valid and
invalid objects, `observedGeneration`, no rewrite of an unchanged status, 409 retries that keep
other controllers' entries, and leader election between two control-plane replicas."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from fake_kube import FakeKube
from test_kubernetes_provider import gateway, gateway_class, route, service, wait_for

from meshgate.controlplane.pipeline import ControlPlane
from meshgate.providers.kubernetes import KubernetesProvider
from meshgate.providers.kubernetes.status import StatusWriter, _Cluster
from meshgate.xds.snapshot import SnapshotCache

pytestmark = pytest.mark.timeout(90)

GW = "gateway.networking.k8s.io/v1"
MG = "meshgate.io/v1alpha1"
CONTROLLER = "meshgate.io/gateway-controller"


def backend(name: str = "app") -> dict:
    return {"apiVersion": MG, "kind": "Backend", "metadata": {"name": name},
            "spec": {"endpoints": [{"address": "127.0.0.1", "port": 9}]}}


def mg_backend_ref(name: str) -> dict:
    return {"group": "meshgate.io", "kind": "Backend", "name": name, "port": 9}


def status_patches(kube: FakeKube) -> list[str]:
    return [path for method, path in kube.requests if method == "PATCH" and path.split("?")[0].endswith("/status")]


def cond(conditions: list[dict], type_: str) -> dict:
    found = [c for c in conditions if c["type"] == type_]
    assert found, f"no {type_} condition in {conditions}"
    return found[0]


def our_parents(obj: dict) -> list[dict]:
    return [p for p in (obj.get("status") or {}).get("parents", []) if p["controllerName"] == CONTROLLER]


class Replica:
    """One control-plane replica in-process: provider, pipeline and status writer, as `meshgate
    xds --kubernetes` wires them."""

    def __init__(self, kube: FakeKube, **writer_options) -> None:  # noqa: ANN003
        self.kube = kube
        self.writer_options = writer_options
        self.tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Replica:
        self.provider = KubernetesProvider(self.kube.kubeconfig_path, debounce=0.01, sync_timeout=10)
        await self.provider.start()
        self.plane = ControlPlane([], SnapshotCache(), provider=self.provider)
        self.writer = StatusWriter(self.provider, batch_seconds=0.05, **self.writer_options)
        self.plane.translation_listeners.append(self.writer.notify)
        self.provider.object_listeners.append(self.writer.object_changed)
        self.plane.reload()
        self.tasks = [asyncio.create_task(self.plane.watch()), asyncio.create_task(self.writer.run())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.provider.close()


@pytest.fixture
async def kube(tmp_path: Path):
    fake = await FakeKube(bookmark_interval=0.2).start()
    (tmp_path / "kubeconfig").write_text(fake.kubeconfig())
    fake.kubeconfig_path = str(tmp_path / "kubeconfig")
    yield fake
    await fake.stop()


def cluster_objects(kube: FakeKube) -> None:
    kube.create(gateway_class())
    kube.create(gateway_class("other", controller="example.com/another-controller"))
    gw = gateway()
    gw["spec"]["listeners"].append({"name": "admin", "protocol": "HTTP", "port": 8081})
    kube.create(gw)
    kube.create(gateway("theirs", cls="other", port=9090))
    kube.create(backend("app"))
    kube.create(service("svc"))
    # valid: attached, every backendRef resolved
    kube.create(route("good", backend=mg_backend_ref("app")))
    # partly valid: attached to one parent but not to the other; one backendRef missing
    partial = route("partial", backend=mg_backend_ref("app"), path="/partial")
    partial["spec"]["parentRefs"].append({"name": "edge", "sectionName": "nope"})
    partial["spec"]["rules"][0]["backendRefs"].append(mg_backend_ref("missing"))
    kube.create(partial)
    # invalid: a field meshgate rejects
    bad = route("bad", backend=mg_backend_ref("app"), path="/bad")
    bad["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Bogus"
    kube.create(bad)
    # only another implementation's Gateway as parent: nothing of ours to say
    kube.create(route("foreign", parent="theirs", path="/foreign"))
    kube.create({"apiVersion": MG, "kind": "ClientTrafficPolicy", "metadata": {"name": "ctp"},
                 "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}],
                          "timeout": {"http": {"idleTimeout": "10m"}}}})
    kube.create({"apiVersion": MG, "kind": "BackendTrafficPolicy", "metadata": {"name": "btp"},
                 "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "nothere"}],
                          "timeout": {"http": {"requestTimeout": "5s"}}}})
    kube.create({"apiVersion": MG, "kind": "BackendTrafficPolicy", "metadata": {"name": "on-route"},
                 "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "good"}],
                          "timeout": {"http": {"requestTimeout": "5s"}}}})


def read(kube: FakeKube, kind: str, name: str, api: str = GW) -> dict:
    ns = "" if kind == "GatewayClass" else "default"
    return kube.read(api, kind, name, ns)


async def settled(kube: FakeKube, replica: Replica) -> None:
    """Every object meshgate writes has its status, and the writer's last pass wrote nothing."""
    await wait_for(lambda: our_parents(read(kube, "HTTPRoute", "good")) and our_parents(read(kube, "HTTPRoute", "bad"))
                   and (read(kube, "BackendTrafficPolicy", "on-route", MG).get("status") or {}).get("ancestors"),
                   timeout=20, what="statuses written")
    for _ in range(50):
        if await replica.writer.sync() == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("statuses never settled")


async def test_conditions_for_valid_partly_valid_and_invalid_objects(kube: FakeKube) -> None:
    cluster_objects(kube)
    async with Replica(kube, addresses=["192.0.2.10"]) as replica:
        await settled(kube, replica)

        ours = read(kube, "GatewayClass", "meshgate")["status"]["conditions"]
        assert cond(ours, "Accepted")["status"] == "True" and cond(ours, "Accepted")["observedGeneration"] == 1
        assert "status" not in read(kube, "GatewayClass", "other")  # another controller's class

        gw = read(kube, "Gateway", "edge")["status"]
        assert cond(gw["conditions"], "Accepted")["reason"] == "Accepted"
        assert cond(gw["conditions"], "Programmed")["status"] == "True"
        assert gw["addresses"] == [{"type": "IPAddress", "value": "192.0.2.10"}]
        listeners = {l["name"]: l for l in gw["listeners"]}
        # good and partial attach to both listeners (no sectionName); bad never was valid: not attached
        assert listeners["http"]["attachedRoutes"] == 2 and listeners["admin"]["attachedRoutes"] == 2
        assert {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"} in listeners["http"]["supportedKinds"]
        assert cond(listeners["http"]["conditions"], "Programmed")["status"] == "True"
        assert "status" not in read(kube, "Gateway", "theirs")

        [good] = our_parents(read(kube, "HTTPRoute", "good"))
        assert good["parentRef"] == {"name": "edge"}
        assert cond(good["conditions"], "Accepted")["status"] == "True"
        assert cond(good["conditions"], "ResolvedRefs")["reason"] == "ResolvedRefs"
        assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"] for c in good["conditions"])

        first, second = our_parents(read(kube, "HTTPRoute", "partial"))
        assert cond(first["conditions"], "Accepted")["status"] == "True"
        assert cond(second["conditions"], "Accepted")["reason"] == "NoMatchingParent"
        assert second["parentRef"] == {"name": "edge", "sectionName": "nope"}
        for parent in (first, second):
            resolved = cond(parent["conditions"], "ResolvedRefs")
            assert resolved["status"] == "False" and resolved["reason"] == "BackendNotFound"
            assert "missing" in resolved["message"]

        [bad] = our_parents(read(kube, "HTTPRoute", "bad"))
        accepted = cond(bad["conditions"], "Accepted")
        assert accepted["status"] == "False" and accepted["reason"] == "UnsupportedValue" and "type" in accepted["message"]
        assert "status" not in read(kube, "HTTPRoute", "foreign")

        [ctp] = read(kube, "ClientTrafficPolicy", "ctp", MG)["status"]["ancestors"]
        assert ctp["ancestorRef"] == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                      "namespace": "default", "name": "edge"}
        assert ctp["controllerName"] == CONTROLLER and cond(ctp["conditions"], "Accepted")["reason"] == "Accepted"
        [missing] = read(kube, "BackendTrafficPolicy", "btp", MG)["status"]["ancestors"]
        assert cond(missing["conditions"], "Accepted")["reason"] == "TargetNotFound"
        # A policy on a route: its ancestor is the Gateway the route is attached to.
        [on_route] = read(kube, "BackendTrafficPolicy", "on-route", MG)["status"]["ancestors"]
        assert on_route["ancestorRef"]["kind"] == "Gateway" and on_route["ancestorRef"]["name"] == "edge"
        assert cond(on_route["conditions"], "Accepted")["status"] == "True"
        assert cond(read(kube, "Backend", "app", MG)["status"]["conditions"], "Accepted")["status"] == "True"


async def test_unchanged_status_is_not_rewritten_and_a_fix_shows(kube: FakeKube) -> None:
    cluster_objects(kube)
    async with Replica(kube) as replica:
        await settled(kube, replica)
        patches = len(status_patches(kube))
        before = read(kube, "HTTPRoute", "good")
        # A reload that changes nothing any status shows (a new Service), then a full pass.
        kube.create(service("unrelated"))
        reloads = replica.plane.status.last_reload
        await wait_for(lambda: replica.plane.status.last_reload != reloads, what="reload")
        assert await replica.writer.sync() == 0
        assert len(status_patches(kube)) == patches
        assert read(kube, "HTTPRoute", "good")["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

        # Fix the invalid route: Accepted turns True, for the new generation.
        bad = read(kube, "HTTPRoute", "bad")
        bad["spec"]["rules"][0]["matches"][0]["path"]["type"] = "PathPrefix"
        kube.update(bad)

        def fixed() -> dict | None:
            parents = our_parents(read(kube, "HTTPRoute", "bad"))
            ok = parents and cond(parents[0]["conditions"], "Accepted")["status"] == "True"
            return parents[0] if ok else None

        parent = await wait_for(fixed, timeout=20, what="the fixed route's status")
        assert all(c["observedGeneration"] == 2 for c in parent["conditions"])
        gw = read(kube, "Gateway", "edge")["status"]
        await wait_for(lambda: {l["name"]: l for l in read(kube, "Gateway", "edge")["status"]["listeners"]}
                       ["http"]["attachedRoutes"] == 3, what="attachedRoutes to count the fixed route")
        # Someone else overwrites our status: it is written again.
        kube.patch(kube.type_of(GW, "Gateway"), "default", "edge", {"status": {"conditions": []}},
                   "application/merge-patch+json", subresource="status")
        await wait_for(lambda: read(kube, "Gateway", "edge")["status"]["conditions"], what="status restored")
        restored = cond(read(kube, "Gateway", "edge")["status"]["conditions"], "Programmed")
        restored.pop("lastTransitionTime")  # a new transition: the condition was gone meanwhile
        assert restored == {k: v for k, v in cond(gw["conditions"], "Programmed").items() if k != "lastTransitionTime"}


async def test_conflict_is_retried_with_a_fresh_read_and_keeps_other_controllers(kube: FakeKube) -> None:
    kube.create(gateway_class())
    kube.create(gateway())
    kube.create(backend("app"))
    kube.create(route("app", backend=mg_backend_ref("app")))
    # Another implementation reports on its own parent of the same route.
    other_entry = {"parentRef": {"name": "elsewhere"}, "controllerName": "example.com/another-controller",
                   "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                                   "observedGeneration": 1, "lastTransitionTime": "2024-01-01T00:00:00Z"}]}
    routes = kube.type_of(GW, "HTTPRoute")
    kube.patch(routes, "default", "app", {"status": {"parents": [other_entry]}}, "application/merge-patch+json", "status")
    async with Replica(kube) as replica:
        await wait_for(lambda: our_parents(read(kube, "HTTPRoute", "app")), what="route status")
        # A write based on a stale read (as when another writer got there first): 409, read again, retry.
        replica.writer.is_leader = lambda: False  # keep the background loop out of the way
        stale = read(kube, "HTTPRoute", "app")
        stale["status"] = {"parents": [other_entry]}
        kube.patch(routes, "default", "app", {"metadata": {"labels": {"touched": "yes"}}}, "application/merge-patch+json")
        want = {"parents": [other_entry, {**our_parents(read(kube, "HTTPRoute", "app"))[0], "conditions": []}]}
        cluster = _Cluster(replica.provider.informers, CONTROLLER)
        kind = next(i.kind for i in replica.provider.informers if i.kind.plural == "httproutes" and i.kind.group == "gateway.networking.k8s.io")
        conflicts = replica.writer.conflicts
        await replica.writer._write(kind, stale, want, cluster)
        assert replica.writer.conflicts == conflicts + 1
        parents = read(kube, "HTTPRoute", "app")["status"]["parents"]
        assert other_entry in parents  # never lost
        [mine] = [p for p in parents if p["controllerName"] == CONTROLLER]
        assert cond(mine["conditions"], "Accepted")["status"] == "True"  # rebuilt from the fresh read


# -- two replicas: one leader writes, the other takes over when the leader stops renewing --------


class ControllerReplica(Replica):
    """A replica with leader election (`Controller`), as `meshgate xds --kubernetes` runs."""

    async def __aenter__(self) -> ControllerReplica:
        from meshgate.controlplane.status import ControlPlaneStatus
        from meshgate.providers.kubernetes.controller import Controller

        self.provider = KubernetesProvider(self.kube.kubeconfig_path, debounce=0.01, sync_timeout=10,
                                           max_backoff=0.5)
        await self.provider.start()
        self.plane = ControlPlane([], SnapshotCache(), provider=self.provider, status=ControlPlaneStatus())
        self.plane.reload()
        self.controller = Controller(self.plane, self.provider, lease_namespace="meshgate", lease_seconds=1.5,
                                     renew_deadline=1.0, retry_seconds=0.2, batch_seconds=0.05)
        self.writer = self.controller.writer
        self.controller.start()
        self.tasks = [asyncio.create_task(self.plane.watch())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.controller.close()
        await super().__aexit__(*exc)


def lease(kube: FakeKube) -> dict:
    return kube.read("coordination.k8s.io/v1", "Lease", "meshgate-controlplane", "meshgate")


async def test_one_leader_writes_and_the_other_takes_over(kube: FakeKube) -> None:
    cluster_objects(kube)
    async with ControllerReplica(kube) as a, ControllerReplica(kube) as b:
        leader = await wait_for(lambda: next((r for r in (a, b) if r.controller.elector.is_leader()), None),
                                what="a leader")
        follower = b if leader is a else a
        await wait_for(lambda: our_parents(read(kube, "HTTPRoute", "good")), timeout=20, what="statuses")
        spec = lease(kube)["spec"]
        assert spec["holderIdentity"] == leader.controller.elector.identity and spec["leaseDurationSeconds"] == 1
        assert spec["renewTime"] and spec["acquireTime"]
        # Exactly one writes: every status PATCH so far is the leader's.
        assert leader.writer.writes > 0 and follower.writer.writes == 0
        assert len(status_patches(kube)) == leader.writer.writes + leader.writer.conflicts
        assert not follower.controller.elector.is_leader()

        # The leader hangs (stops renewing, keeps its Lease): the other takes over once it expires.
        leader.controller.stop_leading()
        transitions = spec.get("leaseTransitions", 0)
        await wait_for(follower.controller.elector.is_leader, timeout=15, what="the follower to take over")
        assert not leader.controller.elector.is_leader()  # its renew deadline passed: it stepped down
        taken = lease(kube)["spec"]
        assert taken["holderIdentity"] == follower.controller.elector.identity
        assert taken["leaseTransitions"] == transitions + 1
        # And the new leader writes: fix the invalid route, its status follows.
        bad = read(kube, "HTTPRoute", "bad")
        bad["spec"]["rules"][0]["matches"][0]["path"]["type"] = "PathPrefix"
        kube.update(bad)
        await wait_for(lambda: cond(our_parents(read(kube, "HTTPRoute", "bad"))[0]["conditions"], "Accepted")["status"] == "True",
                       timeout=20, what="the new leader's status write")
        assert follower.writer.writes > 0
        old_writes = leader.writer.writes
        await follower.writer.sync()
        assert leader.writer.writes == old_writes


async def test_a_replica_that_loses_the_api_server_keeps_serving_and_says_so(kube: FakeKube) -> None:
    from meshgate.controlplane.readiness import readiness

    kube.create(gateway_class())
    kube.create(gateway())
    kube.create(backend("app"))
    kube.create(route("app", backend=mg_backend_ref("app")))
    async with ControllerReplica(kube) as replica:
        await wait_for(replica.controller.elector.is_leader, what="leadership")
        part = readiness(replica.plane.status)["checks"]["dependencies"]["kubernetes"]
        assert part["ok"] and part["last_error"] is None and part["leader"]["leader"]
        version = replica.plane.snapshot.version
        port = kube.port
        await kube.stop()
        try:
            def failing() -> dict | None:
                p = readiness(replica.plane.status)["checks"]["dependencies"]["kubernetes"]
                return p if p["last_error"] else None

            part = await wait_for(failing, timeout=20, what="/readyz to report the lost API server")
            assert part["serving"] == f"last snapshot {version} (kept while the API is unreachable)"
            assert replica.plane.snapshot.version == version  # still served to Envoys
            # Degraded, not unready: when the API server is down every replica loses it at once, and
            # unready replicas would take the control plane away from the Envoys.
            assert part["ok"] is False and part["gating"] is False
            await wait_for(lambda: not replica.controller.elector.is_leader(), what="stepping down")
        finally:
            await kube.start(port)
        await wait_for(lambda: readiness(replica.plane.status)["checks"]["dependencies"]["kubernetes"]["ok"],
                       timeout=20, what="recovery")
