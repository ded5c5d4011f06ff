"""The Consul provider in-process, against a fake Consul agent (tests/fake_consul.py) that speaks
Consul's HTTP API, with the production client (`py-consul`'s `consul.aio`) unmodified: blocking
query semantics, Consul's index reset rules, ACL tokens, and Backends whose endpoints follow a
Consul service through the control plane as EDS alone (no translation), stale when Consul is
unreachable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import consul
import consul.aio
import pytest
from fake_consul import FakeConsul
from test_kubernetes_provider import _histogram_count, wait_for

from meshgate.api.config import load_config
from meshgate.controlplane.pipeline import ControlPlane
from meshgate.errors import ConfigErrors
from meshgate.providers.consul import ConsulEndpoints, ConsulQuery, ServiceWatch, endpoints_of
from meshgate.xds.snapshot import ENDPOINT, ROUTE, SnapshotCache
from meshgate.xds.translator import TranslateOptions

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def agent():
    fake = await FakeConsul(datacenters=("dc2",)).start()
    yield fake
    await fake.stop()


def client(fake: FakeConsul) -> consul.aio.Consul:
    return consul.aio.Consul(host="127.0.0.1", port=fake.port, scheme="http")


# -- the fake itself, through the production client ------------------------------------------------


async def test_fake_speaks_catalog_health_and_blocking_queries(agent: FakeConsul) -> None:
    agent.register("web", 8001, tags=["v1"])
    agent.register("web", 8002, tags=["v1", "canary"], address="127.0.0.2")
    agent.register("web", 9001, datacenter="dc2")
    c = client(agent)
    try:
        index, nodes = await c.health.service("web", passing=True)
        assert int(index) == agent.index_of("web") > 0
        assert [(n["Service"]["Port"], n["Service"]["Address"], n["Node"]["Address"]) for n in nodes] == [
            (8001, "", "127.0.0.1"), (8002, "127.0.0.2", "127.0.0.1")]
        _, nodes = await c.health.service("web", tag=["v1", "canary"])
        assert [n["Service"]["Port"] for n in nodes] == [8002]
        _, nodes = await c.health.service("web", dc="dc2")
        assert [n["Service"]["Port"] for n in nodes] == [9001]
        with pytest.raises(consul.ConsulException, match="No path to datacenter"):
            await c.health.service("web", dc="nowhere")
        _, listed = await c.catalog.service("web")
        assert [s["ServicePort"] for s in listed] == [8001, 8002]

        # A check turning critical: gone from ?passing, still in the catalog (which knows no health).
        agent.set_check("web-8001", "critical")
        _, nodes = await c.health.service("web", passing=True)
        assert [n["Service"]["Port"] for n in nodes] == [8002]
        _, nodes = await c.health.service("web")
        assert {n["Service"]["Port"]: n["Checks"][-1]["Status"] for n in nodes} == {8001: "critical", 8002: "passing"}
        _, listed = await c.catalog.service("web")
        assert len(listed) == 2

        # Blocking query: hangs while nothing changes after `index`, answers as soon as it does.
        index, _ = await c.health.service("web")
        pending = asyncio.ensure_future(c.health.service("web", index=index, wait="20s"))
        await asyncio.sleep(0.3)
        assert not pending.done(), "a blocking query answered with nothing changed"
        agent.register("web", 8003)
        new_index, nodes = await asyncio.wait_for(pending, 5)
        assert int(new_index) > int(index) and 8003 in [n["Service"]["Port"] for n in nodes]
        # `wait` ends a blocking query with the same index: no change, and not an error.
        same, _ = await asyncio.wait_for(c.health.service("web", index=new_index, wait="100ms"), 5)
        assert same == new_index
        # Another service's change doesn't wake this one (per-service index).
        pending = asyncio.ensure_future(c.health.service("web", index=new_index, wait="1s"))
        agent.register("db", 5432)
        assert (await asyncio.wait_for(pending, 5))[0] == new_index
        assert ("GET", f"/v1/health/service/web?index={new_index}&wait=1s") in agent.requests
        # After a restart with a new Raft log, indexes are lower: backwards, for a client.
        await agent.restart(reset_index=True)
        after, _ = await c.health.service("web")
        assert int(after) < int(new_index)
    finally:
        await c.close()


async def test_fake_acl_tokens() -> None:
    fake = await FakeConsul(acl_tokens={"s3cret"}).start()
    fake.register("web", 8001)
    c = client(fake)
    try:
        with pytest.raises(consul.ACLPermissionDenied, match="anonymous|lacks permission"):
            await c.health.service("web")
        with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
            await c.health.service("web", token="wrong")
        _, nodes = await c.health.service("web", token="s3cret")
        assert len(nodes) == 1
    finally:
        await c.close()
        await fake.stop()


# -- one watch ---------------------------------------------------------------------------------------


def ports(watch: ServiceWatch) -> list[int]:
    return [e.port for e in watch.endpoints or ()]


async def test_watch_follows_the_service_and_the_index_rules(agent: FakeConsul) -> None:
    agent.register("web", 8001)
    c = client(agent)
    changes: list[list[int]] = []
    watch = ServiceWatch(c, ConsulQuery(agent.url, "web"), lambda w: changes.append(ports(w)), wait=5, min_backoff=0.05)
    task = asyncio.create_task(watch.run())
    try:
        await wait_for(lambda: ports(watch) == [8001], what="the first answer")
        first_index = watch.index
        agent.register("web", 8002)
        await wait_for(lambda: ports(watch) == [8001, 8002], what="a registration")
        assert watch.index > first_index
        agent.set_check("web-8001", "warning")  # onlyPassing (the default): a warning leaves it out
        await wait_for(lambda: ports(watch) == [8002], what="a warning check")
        agent.set_check("web-8001", "passing")
        await wait_for(lambda: ports(watch) == [8001, 8002], what="passing again")
        agent.deregister("web-8002")
        await wait_for(lambda: ports(watch) == [8001], what="a deregistration")

        # The index goes backwards (a snapshot restored): the watch starts over with a plain read,
        # instead of blocking on an index that won't come back for a long time.
        queries = watch.queries
        agent.force_index(3)
        await wait_for(lambda: watch.index == 3, what="the watch to take the lower index")
        agent.force_index(None)
        agent.register("web", 8004)
        await wait_for(lambda: ports(watch) == [8001, 8004], what="a change after the reset")
        assert watch.queries > queries

        # An index of 0 (a Consul bug) is never blocked on: the watch uses 1, and doesn't spin.
        agent.force_index(0)
        queries = watch.queries
        await asyncio.sleep(0.5)
        assert watch.index == 1
        assert watch.queries - queries < 30, "a watch must not spin on index 0"
        agent.force_index(None)
        assert watch.reason == "Synced" and not watch.stale
        assert changes[0] == [8001]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await c.close()


def test_endpoints_of_consul_rules() -> None:
    def entry(sid: str, address: str, node: str, port: int, *checks: str, weights=None):  # noqa: ANN001, ANN202
        return {"Node": {"Address": node}, "Service": {"ID": sid, "Address": address, "Port": port,
                                                        **({"Weights": weights} if weights else {})},
                "Checks": [{"Status": s} for s in checks]}

    entries = [entry("a", "", "10.0.0.1", 80, "passing"),                 # the node's address
               entry("b", "10.0.0.2", "10.0.0.9", 80, "passing", "warning", weights={"Passing": 10, "Warning": 2}),
               entry("c", "10.0.0.3", "10.0.0.9", 80, "critical"),        # never serves
               entry("d", "web.example", "10.0.0.9", 80, "passing"),     # EDS takes IPs only
               entry("e", "10.0.0.5", "", 80, "warning", weights={"Passing": 1, "Warning": 0})]  # weight 0: out
    strict, skipped = endpoints_of(entries, only_passing=True)
    assert [(e.address, e.weight) for e in strict] == [("10.0.0.1", 1)]
    relaxed, _ = endpoints_of(entries, only_passing=False)
    assert [(e.address, e.weight) for e in relaxed] == [("10.0.0.1", 1), ("10.0.0.2", 2)]
    assert skipped == ["instance d: address 'web.example' is not an IP address"]


# -- the model -----------------------------------------------------------------------------------------


BACKEND = """\
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: {name}}}
spec:
{spec}
"""


def test_backend_consul_shape_is_validated(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("---\n".join([
        BACKEND.format(name="both", spec="  endpoints: [{address: 127.0.0.1, port: 80}]\n  consul: {service: web}"),
        BACKEND.format(name="neither", spec="  protocol: HTTP1"),
        BACKEND.format(name="url", spec="  consul: {service: web, address: 'consul.local/v1'}"),
        BACKEND.format(name="typo", spec="  consul: {service: web, onlyPasing: true}"),
        BACKEND.format(name="good", spec="  consul: {service: web, datacenter: dc2, tags: [v1], onlyPassing: false,"
                                         " address: 'http://127.0.0.1:8500'}"),
    ]))
    with pytest.raises(ConfigErrors) as caught:
        load_config([str(tmp_path)])
    lines = [str(e) for e in caught.value.errors]
    path = tmp_path / "b.yaml"
    assert f"{path}:6: spec.consul: give endpoints or consul, not both: a Consul service's instances are the endpoints" in lines
    assert f"{path}:11: spec: give endpoints (at least one) or consul (a Consul service)" in lines
    assert any(l.startswith(f"{path}:18: spec.consul.address: 'consul.local/v1' is not a Consul address") for l in lines)
    assert any(l.startswith(f"{path}:24: spec.consul.onlyPasing: unknown field; did you mean onlyPassing?") for l in lines), lines
    assert len(lines) == 4, lines


def test_consul_backend_in_a_failover_rule_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG.format(address="http://127.0.0.1:8500").replace(
        "name: web}]}]", "name: web}, {group: meshgate.io, kind: Backend, name: spare}]}]") + """---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: spare}
spec: {fallback: true, endpoints: [{address: 127.0.0.1, port: 9}]}
""")
    with pytest.raises(ConfigErrors) as caught:
        load_config([str(tmp_path)])
    assert [str(e).split(": ", 1)[1] for e in caught.value.errors] == [
        "spec.rules[0].backendRefs[0]: a rule with a fallback Backend can't use a Backend with spec.consul yet "
        "(a Consul service's endpoints can't join a failover cluster)"]


# -- Backends through the control plane --------------------------------------------------------------


CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: 8080}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: web}}
spec:
  consul: {{service: web, address: "{address}"}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{group: meshgate.io, kind: Backend, name: web}}]}}]
"""


def _plane(tmp_path: Path, address: str, token: str | None = None) -> tuple[ControlPlane, ConsulEndpoints]:
    (tmp_path / "config.yaml").write_text(CONFIG.format(address=address))
    plane = ControlPlane([str(tmp_path)], SnapshotCache(), options=TranslateOptions(access_log_path=None))
    endpoints = ConsulEndpoints(plane, token=token, environ={}, wait=5, max_backoff=0.3)
    endpoints.install()
    return plane, endpoints


def addresses(plane: ControlPlane) -> list[str]:
    cla = plane.snapshot.resources[ENDPOINT]["backend/default/web"]
    return sorted(f"{e.endpoint.address.socket_address.address}:{e.endpoint.address.socket_address.port_value}"
                  for loc in cla.endpoints for e in loc.lb_endpoints)


def backend_condition(plane: ControlPlane, problems_only: bool = False) -> dict | None:
    for entry in plane.status.objects(problems_only):
        if entry["kind"] == "Backend" and entry["name"] == "web":
            return next((c for c in entry["conditions"] if c["type"] == "EndpointsUpToDate"), None)
    return None


async def test_backend_follows_consul_as_eds_alone_and_goes_stale(agent: FakeConsul, tmp_path: Path) -> None:
    agent.register("web", 8001, address="127.0.0.1")
    plane, endpoints = _plane(tmp_path, agent.url)
    translations = plane.status.metrics.translation
    try:
        assert plane.reload()
        await wait_for(lambda: addresses(plane) == ["127.0.0.1:8001"], what="the first Consul answer")
        count = _histogram_count(translations)
        routes = dict(plane.snapshot.resources[ROUTE])
        assert backend_condition(plane)["status"] == "True"

        agent.register("web", 8002, address="127.0.0.2")
        await wait_for(lambda: addresses(plane) == ["127.0.0.1:8001", "127.0.0.2:8002"], what="a registration")
        agent.set_check("web-8001", "critical")
        await wait_for(lambda: addresses(plane) == ["127.0.0.2:8002"], what="a critical check")
        agent.deregister("web-8001")
        agent.register("web", 8003, address="127.0.0.3")
        await wait_for(lambda: addresses(plane) == ["127.0.0.2:8002", "127.0.0.3:8003"], what="a replacement")
        assert _histogram_count(translations) == count, "a Consul change must not translate anything"
        assert all(plane.snapshot.resources[ROUTE][n] is m for n, m in routes.items())
        assert plane.status.metrics.endpoint_updates._value.get() >= 3

        # Consul unreachable: the last endpoints keep serving, and the Backend says they are stale.
        await agent.stop()
        await wait_for(lambda: (c := backend_condition(plane, problems_only=True)) and c["status"] == "False",
                       what="the Backend to report stale endpoints")
        condition = backend_condition(plane)
        assert condition["reason"] == "ConsulUnreachable"
        assert "cannot reach Consul" in condition["message"] and "serving the 2 endpoint(s) last seen" in condition["message"]
        assert addresses(plane) == ["127.0.0.2:8002", "127.0.0.3:8003"]
        assert plane.status.extra["consul"]()["services"][0]["stale"] is True

        # Back, with a new Raft log (indexes start low) and a change made meanwhile: recovered.
        agent.deregister("web-8002")
        await agent.restart(reset_index=True)
        await wait_for(lambda: addresses(plane) == ["127.0.0.3:8003"], timeout=10, what="recovery")
        await wait_for(lambda: backend_condition(plane)["status"] == "True", what="fresh again")
        assert backend_condition(plane, problems_only=True) is None
        assert _histogram_count(translations) == count

        # A Backend that stops naming Consul gets its own endpoints again.
        (tmp_path / "config.yaml").write_text(
            CONFIG.format(address=agent.url).replace('consul: {service: web, address: "%s"}' % agent.url,
                                                     "endpoints: [{address: 127.0.0.9, port: 9}]"))
        await plane.reload_in_thread()
        await wait_for(lambda: addresses(plane) == ["127.0.0.9:9"], what="static endpoints again")
        assert endpoints.watches == {}
    finally:
        await endpoints.close()


async def test_acl_token_refused_is_reported_on_the_backend(tmp_path: Path) -> None:
    fake = await FakeConsul(acl_tokens={"right"}).start()
    fake.register("web", 8001)
    plane, endpoints = _plane(tmp_path, fake.url, token="wrong")
    try:
        plane.reload()
        await wait_for(lambda: (c := backend_condition(plane, problems_only=True)) and c["reason"] == "ConsulAccessDenied",
                       what="the 403 to be reported")
        condition = backend_condition(plane)
        assert condition["status"] == "False"
        assert "ACL not found" in condition["message"] and "no endpoints yet" in condition["message"]
        assert "--consul-token-file" in condition["message"]
        assert addresses(plane) == []
    finally:
        await endpoints.close()
        await fake.stop()
