"""Per-tenant limits (`--max-objects-per-namespace`, `--max-routes-per-namespace`): the objects of a
namespace beyond its limit, newest first, are not programmed and say why in their status; other
namespaces are unaffected; a warning is logged once; a gauge counts them. In files (in-process
pipeline, and `meshgate run` with a real Envoy) and in Kubernetes (the fake API server, with the
status written back)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_kube import FakeKube
from harness import ROOT, Meshgate, free_port, request, wait_until, write
from test_kubernetes_status import CONTROLLER, Replica, our_parents
from test_kubernetes_provider import gateway, gateway_class, wait_for

from meshgate.controlplane.pipeline import ControlPlane
from meshgate.gatewayapi.tenant_limits import NamespaceLimits
from meshgate.xds.snapshot import ROUTE, SnapshotCache

pytestmark = pytest.mark.timeout(120)

GW = "gateway.networking.k8s.io/v1"


def route(name: str, namespace: str, path: str, created: str | None = None) -> dict:
    meta = {"name": name, "namespace": namespace, **({"creationTimestamp": created} if created else {})}
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": meta,
            "spec": {"parentRefs": [{"name": "edge", "namespace": "default"}],
                     "rules": [{"matches": [{"path": {"value": path}}],
                                "backendRefs": [{"group": "meshgate.io", "kind": "Backend", "name": "app"}]}]}}


def backend(namespace: str, port: int = 9, name: str = "app", sample: bool = False) -> dict:
    meta = {"name": name, "namespace": namespace}
    if sample:
        meta["annotations"] = {"meshgate.io/sample-upstream": "echo"}
    return {"apiVersion": "meshgate.io/v1alpha1", "kind": "Backend", "metadata": meta,
            "spec": {"endpoints": [{"address": "127.0.0.1", "port": port}]}}


def edge(port: int = 8080) -> dict:
    gw = {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "edge"},
          "spec": {"listeners": [{"name": "http", "protocol": "HTTP", "port": port,
                                  "allowedRoutes": {"namespaces": {"from": "All"}}}]}}
    return gw


def served_paths(plane: ControlPlane) -> set[str]:
    return {r.match.path_separated_prefix or r.match.path or r.match.prefix
            for rc in plane.snapshot.resources[ROUTE].values() for vh in rc.virtual_hosts for r in vh.routes}


def gauge(plane: ControlPlane, namespace: str, limit: str) -> float | None:
    return plane.status.metrics.registry.get_sample_value(
        "meshgate_namespace_objects_over_limit", {"namespace": namespace, "limit": limit})


def test_routes_beyond_a_namespace_limit_are_left_out_newest_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "config.yaml"
    docs = [edge(), backend("team-a"), backend("team-b"),
            # team-a: oldest first decides, then names (files without a timestamp come first).
            route("zeta", "team-a", "/a/zeta", created="2026-01-01T00:00:00Z"),
            route("alpha", "team-a", "/a/alpha", created="2026-03-01T00:00:00Z"),
            route("beta", "team-a", "/a/beta", created="2026-02-01T00:00:00Z"),
            # team-b: as many routes, under a limit it doesn't reach on its own.
            route("one", "team-b", "/b/one"), route("two", "team-b", "/b/two")]
    write(config, yaml.safe_dump_all(docs))
    plane = ControlPlane([str(tmp_path)], SnapshotCache())
    plane.tenant_limits = NamespaceLimits(max_routes=2, registry=plane.status.metrics.registry)
    with caplog.at_level(logging.WARNING, logger="meshgate.tenants"):
        plane.reload()
        plane.reload()  # the same state again: logged once, not per reload
    assert served_paths(plane) == {"/a/zeta", "/a/beta", "/b/one", "/b/two"}
    objects = {(o["namespace"], o["name"]): o for o in plane.objects_status()}
    alpha = objects[("team-a", "alpha")]
    assert alpha["origin"] == f"{config}:{_line_of(config, 'name: alpha')}"
    accepted = alpha["conditions"][0]
    assert (accepted["type"], accepted["status"], accepted["reason"]) == ("Accepted", "False", "NamespaceLimitExceeded")
    assert accepted["message"].startswith("namespace team-a has 3 routes, over its limit of 2 "
                                          "(--max-routes-per-namespace): the oldest are programmed, and this one is number 3")
    assert alpha["conditions"][1]["type"] == "Programmed" and alpha["conditions"][1]["status"] == "False"
    assert all(c["status"] == "True" for c in objects[("team-a", "zeta")]["conditions"] if c["type"] == "Accepted")
    assert plane.status.last_error == []  # a limit is not a config error: the valid objects publish
    warnings = [r for r in caplog.records if r.name == "meshgate.tenants"]
    assert len(warnings) == 1 and warnings[0].object == "HTTPRoute team-a/alpha"
    assert gauge(plane, "team-a", "routes") == 1 and gauge(plane, "team-b", "routes") is None

    # One route deleted: the next oldest takes its place, and the gauge goes back to zero.
    write(config, yaml.safe_dump_all([d for d in docs if d["metadata"]["name"] != "zeta"]))
    plane.reload()
    assert served_paths(plane) == {"/a/alpha", "/a/beta", "/b/one", "/b/two"}
    assert gauge(plane, "team-a", "routes") is None


def test_the_object_limit_counts_what_tenants_write(tmp_path: Path) -> None:
    """Gateways, routes, Backends and policies count; Secrets, ConfigMaps and Services don't."""
    docs = [edge(), backend("team-a", name="a"), backend("team-a", name="b"),
            route("r1", "team-a", "/r1"), route("r2", "team-a", "/r2"),
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pages", "namespace": "team-a"}, "data": {"x": "y"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "team-a"},
             "spec": {"ports": [{"port": 80}]}}]
    for d in docs[3:5]:
        d["spec"]["rules"][0]["backendRefs"][0]["name"] = "a"
    write(tmp_path / "config.yaml", yaml.safe_dump_all(docs))
    plane = ControlPlane([str(tmp_path)], SnapshotCache())
    plane.tenant_limits = NamespaceLimits(max_objects=3, registry=plane.status.metrics.registry)
    plane.reload()
    objects = {(o["kind"], o["name"]): o for o in plane.objects_status() if o["namespace"] == "team-a"}
    left_out = sorted(k for k, o in objects.items() if o["conditions"][0]["reason"] == "NamespaceLimitExceeded")
    # By kind then name (no timestamps): Backend a, Backend b, HTTPRoute r1 kept; r2 is the 4th.
    assert left_out == [("HTTPRoute", "r2")]
    assert "namespace team-a has 4 objects, over its limit of 3" in objects[("HTTPRoute", "r2")]["conditions"][0]["message"]
    assert served_paths(plane) == {"/r1"}
    assert gauge(plane, "team-a", "objects") == 1


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_routes must be at least 1"):
        NamespaceLimits(max_routes=0)
    out = subprocess.run([sys.executable, "-m", "meshgate", "run", "x.yaml", "--max-routes-per-namespace", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert ("argument --max-routes-per-namespace: 0 is not a limit: give at least 1, or leave the flag out for none"
            in out.stderr), out.stderr
    out = subprocess.run([sys.executable, "-m", "meshgate", "xds", "--kubernetes", "--max-objects-per-namespace", "lots"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "'lots' is not a whole number" in out.stderr, out.stderr


def _line_of(path: Path, text: str) -> int:
    """The line of the document holding `text` (its apiVersion line: where a document starts)."""
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if text in line)
    start = max(i for i in range(at + 1) if lines[i].startswith("apiVersion") or lines[i] == "---")
    return start + 1 if lines[start].startswith("apiVersion") else start + 2


# -- Kubernetes ---------------------------------------------------------------------------------------


@pytest.fixture
async def kube(tmp_path: Path):
    fake = await FakeKube(bookmark_interval=0.2).start()
    (tmp_path / "kubeconfig").write_text(fake.kubeconfig())
    fake.kubeconfig_path = str(tmp_path / "kubeconfig")
    yield fake
    await fake.stop()


async def test_kubernetes_the_newest_route_is_left_out_and_its_status_says_why(kube: FakeKube) -> None:
    kube.create(gateway_class())
    gw = gateway()
    gw["spec"]["listeners"][0]["allowedRoutes"] = {"namespaces": {"from": "All"}}
    kube.create(gw)
    for ns in ("team-a", "team-b"):
        kube.create(backend(ns))
    kube.create(route("first", "team-a", "/a/first"))
    kube.create(route("other", "team-b", "/b/other"))
    async with Replica(kube) as replica:
        replica.plane.tenant_limits = NamespaceLimits(max_routes=1, registry=replica.plane.status.metrics.registry)
        replica.plane.reload()
        await asyncio.sleep(1.1)  # creationTimestamp has seconds: the next route is newer, whatever its name
        kube.create(route("aaa-newer", "team-a", "/a/newer"))
        await wait_for(lambda: our_parents(kube.read(GW, "HTTPRoute", "aaa-newer", "team-a")), timeout=15,
                       what="the newer route's status")
        parent = our_parents(kube.read(GW, "HTTPRoute", "aaa-newer", "team-a"))[0]
        accepted = next(c for c in parent["conditions"] if c["type"] == "Accepted")
        assert (accepted["status"], accepted["reason"]) == ("False", "NamespaceLimitExceeded")
        assert "namespace team-a has 2 routes, over its limit of 1" in accepted["message"]
        assert parent["controllerName"] == CONTROLLER
        for name, ns in (("first", "team-a"), ("other", "team-b")):
            await wait_for(lambda: our_parents(kube.read(GW, "HTTPRoute", name, ns)), timeout=15, what=f"{name}'s status")
            conditions = our_parents(kube.read(GW, "HTTPRoute", name, ns))[0]["conditions"]
            assert next(c for c in conditions if c["type"] == "Accepted")["status"] == "True"
        assert served_paths(replica.plane) == {"/a/first", "/b/other"}
        objects = {(o["namespace"], o["name"]): o for o in replica.plane.objects_status()}
        assert objects[("team-a", "aaa-newer")]["origin"] == "kubernetes:HTTPRoute team-a/aaa-newer"


# -- meshgate run, with a real Envoy ---------------------------------------------------------------------


def test_meshgate_run_serves_the_routes_within_the_limits(tmp_path: Path) -> None:
    http, app_a, app_b = free_port(), free_port(), free_port()
    docs = [edge(http), backend("team-a", app_a, sample=True), backend("team-b", app_b, sample=True),
            route("old", "team-a", "/a/old", created="2026-01-01T00:00:00Z"),
            route("new", "team-a", "/a/new", created="2026-02-01T00:00:00Z"),
            route("one", "team-b", "/b/one")]
    config = tmp_path / "config"
    config.mkdir()
    write(config / "routes.yaml", yaml.safe_dump_all(docs))
    mg = Meshgate([str(config)], tmp_path, args=["--max-routes-per-namespace", "1"])
    try:
        mg.start()
        wait_until(lambda: request(http, "/a/old").status == 200, timeout=15, what="team-a's oldest route")
        assert request(http, "/b/one").status == 200  # another namespace, unaffected
        assert request(http, "/a/new").status == 404  # over team-a's limit: not programmed
        metrics = request(mg.status_port, "/metrics").body.decode()
        assert 'meshgate_namespace_objects_over_limit{limit="routes",namespace="team-a"} 1.0' in metrics
        # The old route goes: the new one is within the limit now, and serves.
        write(config / "routes.yaml", yaml.safe_dump_all([d for d in docs if d["metadata"]["name"] != "old"]))
        wait_until(lambda: request(http, "/a/new").status == 200, timeout=15, what="the new route to take its place")
        assert mg.stop() == 0, mg.output()
        stderr = mg.stderr_path.read_text()
        assert stderr.count("object not programmed: its namespace is over a per-tenant limit") == 1, stderr[-3000:]
    finally:
        mg.stop()
