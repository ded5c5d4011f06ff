"""/readyz detail and probe semantics, through the real status HTTP server and ADS server with a
real ADS client (tests/ads_client.py): readiness gates on config, an ACK and each dependency;
liveness (/healthz) on none of them. `meshgate run`'s own /readyz is checked end to end in
tests/test_dashboards.py."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from ads_client import AdsClient, make_snapshot

from meshgate.controlplane.readiness import readiness
from meshgate.controlplane.status import ControlPlaneStatus
from meshgate.controlplane.status_server import start_status_server
from meshgate.xds.server import start_xds_server
from meshgate.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SnapshotCache

GROUP = "edge"


@pytest.fixture
async def plane():
    cache, status = SnapshotCache(), ControlPlaneStatus()
    server, port = await start_xds_server(cache, status, "127.0.0.1:0")
    runner, status_port = await start_status_server(status, "127.0.0.1", 0)
    clients: list[AdsClient] = []
    url = f"http://127.0.0.1:{status_port}"

    async def get(path: str) -> tuple[int, object]:
        async with aiohttp.ClientSession() as session, session.get(f"{url}{path}") as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body

    def connect(node_id: str) -> AdsClient:
        clients.append(client := AdsClient(port, node_id=node_id, cluster=GROUP))
        return client

    def publish(snapshot) -> None:  # noqa: ANN001 - what the reload pipeline does
        cache.set_snapshot(GROUP, snapshot)
        status.snapshot, status.version = snapshot, snapshot.version

    try:
        yield status, get, connect, publish
    finally:
        for client in clients:
            await client.close()
        await server.stop(None)
        await runner.cleanup()


async def test_readyz_detail_follows_config_envoys_and_dependencies(plane) -> None:
    status, get, connect, publish = plane
    code, body = await get("/readyz")
    assert code == 503 and body["ready"] is False
    assert body["checks"]["config"] == {**body["checks"]["config"], "ok": False, "state": "none"}
    assert body["checks"]["envoys"]["ok"] is False and body["checks"]["dependencies"] == {}
    assert await get("/healthz") == (200, "ok\n")  # liveness: the process answers, nothing else

    publish(first := make_snapshot())
    code, body = await get("/readyz")
    assert code == 503 and body["checks"]["config"]["ok"] is True and body["checks"]["config"]["version"] == first.version
    assert body["checks"]["envoys"]["message"] == "no Envoy has ACKed the config yet"

    envoy = connect("envoy-1")
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ("a",)), (LISTENER, ()), (ROUTE, ("main",))):
        await envoy.request(type_url, names)
        await envoy.ack(await envoy.recv())
    # (No expect_no_response here: its probe request of a made-up type would count as unACKed.)
    for _ in range(200):  # bounded: the ACKs are handled within milliseconds
        code, body = await get("/readyz")
        if body["checks"]["envoys"]["in_sync"]:
            break
        await asyncio.sleep(0.01)
    assert code == 200 and body["ready"] is True
    (node,) = body["checks"]["envoys"]["nodes"]
    assert node["node"] == "envoy-1" and node["live"] is True and node["in_sync"] is True
    assert body["checks"]["envoys"]["in_sync"] == 1

    # A config change the Envoy rejects: it is out of sync and says what it NACKed, but the
    # control plane stays ready (it must stay reachable to deliver the fix).
    publish(make_snapshot(timeouts={"a": 4}))
    bad = await envoy.recv()
    await envoy.request(CLUSTER, nonce=bad.nonce, version=first.version, error="nope")
    await envoy.expect_no_response()
    code, body = await get("/readyz")
    (node,) = body["checks"]["envoys"]["nodes"]
    assert code == 200 and node["in_sync"] is False and node["nacked"] == {"Cluster": bad.version_info}

    # A dependency in use gates readiness (and only readiness); one not in use is left out.
    healthy = {"ok": True, "message": "watching"}
    status.dependencies["kubernetes"] = lambda: healthy
    status.dependencies["edge_companion"] = lambda: None
    code, body = await get("/readyz")
    assert code == 200 and body["checks"]["dependencies"] == {"kubernetes": {**healthy, "gating": True}}
    healthy["ok"] = False
    code, body = await get("/readyz")
    assert code == 503 and body["checks"]["dependencies"]["kubernetes"]["ok"] is False
    assert await get("/healthz") == (200, "ok\n")
    healthy["gating"] = False  # a failing dependency that says so only degrades: still ready
    code, body = await get("/readyz")
    assert code == 200 and body["checks"]["dependencies"]["kubernetes"] == {**healthy, "ok": False, "gating": False}
    del healthy["gating"]

    def broken() -> dict:
        raise RuntimeError("boom")

    status.dependencies["kubernetes"] = broken  # a failing check is a failed check, not a 500
    code, body = await get("/readyz")
    assert code == 503 and body["checks"]["dependencies"]["kubernetes"] == {"ok": False, "gating": True,
                                                                             "error": "check failed: boom"}


# -- dependency checks that follow the config (meshgate.controlplane.dependencies) ---------------

def _translation(jwks_uris=(), global_limit=False):  # noqa: ANN001, ANN202 - duck-typed IR
    from types import SimpleNamespace as NS

    routes = [NS(security=NS(jwt=NS(providers=[NS(jwks_uri=u)]), signature=None), shaping=None) for u in jwks_uris]
    return NS(ir=NS(listeners=[NS(virtual_hosts=[NS(routes=routes)])]))


async def test_config_dependencies_come_and_go_with_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshgate.controlplane import dependencies as deps
    from meshgate.controlplane.status import ControlPlaneStatus

    status = ControlPlaneStatus()
    monkeypatch.setattr("meshgate.edge.config.global_rate_limits", lambda listeners: {})
    plane = deps.ConfigDependencies(status, redis_url="redis://:hunter2@127.0.0.1:1/0", interval=60)
    plane.sync(_translation(["http://127.0.0.1:1/a.json", "http://127.0.0.1:1/b.json"]))
    assert set(status.dependencies) == {"jwks:http://127.0.0.1:1/a.json", "jwks:http://127.0.0.1:1/b.json"}
    first = status.dependencies["jwks:http://127.0.0.1:1/a.json"]
    plane.sync(_translation(["http://127.0.0.1:1/a.json"]))  # b dropped; a kept (the same check)
    assert set(status.dependencies) == {"jwks:http://127.0.0.1:1/a.json"}
    assert status.dependencies["jwks:http://127.0.0.1:1/a.json"] is first
    monkeypatch.setattr("meshgate.edge.config.global_rate_limits", lambda listeners: {"r": object()})
    plane.sync(_translation())
    assert set(status.dependencies) == {"redis"}
    await asyncio.sleep(0.2)  # the first probe: nothing listens on port 1
    detail = readiness(status)["checks"]["dependencies"]["redis"]
    assert detail["ok"] is False and detail["gating"] is False and "hunter2" not in str(detail)
    assert detail["target"] == "redis://***@127.0.0.1:1/0"
    plane.close()


@pytest.mark.parametrize("value", ["abc", "0", "5000"])
def test_a_bad_dependency_interval_is_a_clear_error(value: str) -> None:
    from meshgate.controlplane.dependencies import check_interval
    from meshgate.errors import StartupError

    with pytest.raises(StartupError, match=f"MESHGATE_DEPENDENCY_CHECK_INTERVAL={value}: expected seconds"):
        check_interval({"MESHGATE_DEPENDENCY_CHECK_INTERVAL": value})
