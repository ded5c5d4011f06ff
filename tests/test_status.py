"""ControlPlaneStatus as the ADS server's observer, read through the real status HTTP server:
NACKs stay visible until resolved, and Envoys sharing a node.id stay apart."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import aiohttp
import pytest
from ads_client import AdsClient, make_snapshot

from meshgate.controlplane.status import ControlPlaneStatus
from meshgate.controlplane.status_server import start_status_server
from meshgate.envoy.bootstrap import BootstrapOptions, default_node_id, render_bootstrap
from meshgate.xds.server import start_xds_server
from meshgate.xds.snapshot import CLUSTER, LISTENER, SnapshotCache

GROUP = "edge"


class Env:
    def __init__(self, cache, status, server, port, url) -> None:  # noqa: ANN001
        self.cache, self.status, self.server, self.port, self.url = cache, status, server, port, url
        self.clients: list[AdsClient] = []

    def connect(self, node_id: str = "envoy-1") -> AdsClient:
        client = AdsClient(self.port, node_id=node_id, cluster=GROUP)
        self.clients.append(client)
        return client

    async def get(self) -> dict:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/status") as resp:
            assert resp.status == 200
            return await resp.json()


@pytest.fixture
async def env(caplog):
    cache, status = SnapshotCache(), ControlPlaneStatus()
    server, port = await start_xds_server(cache, status, "127.0.0.1:0")
    runner, status_port = await start_status_server(status, "127.0.0.1", 0)
    e = Env(cache, status, server, port, f"http://127.0.0.1:{status_port}")
    try:
        yield e
    finally:
        for client in e.clients:
            await client.close()
        await server.stop(None)
        await runner.cleanup()
    errors = [r for r in caplog.records if r.name.startswith("meshgate") and r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


async def until(predicate, what: str = "condition"):  # noqa: ANN001
    for _ in range(300):
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_nack_stays_visible_until_a_later_version_is_acked(env: Env):
    env.cache.set_snapshot(GROUP, make_snapshot())
    client = env.connect()
    await client.request(LISTENER)
    good = await client.recv()
    await client.ack(good)
    await client.expect_no_response()  # the ACK is handled before the next publish
    env.cache.set_snapshot(GROUP, make_snapshot(listeners={"http": "main", "other": "main"}))
    bad = await client.recv()
    await client.request(LISTENER, nonce=bad.nonce, version=good.version_info, error="Address already in use")
    # Envoy's later requests echo the latest nonce with the version it still runs: not an ACK.
    await client.request(LISTENER, nonce=bad.nonce, version=good.version_info)
    await client.expect_no_response()

    line = f"Envoy node envoy-1 rejected Listener version {bad.version_info}: Address already in use"
    env.status.last_error = []  # what the reload pipeline does after a valid reload
    status = await env.get()
    assert status["last_error"] == [line]
    node = status["nodes"]["envoy-1"]
    assert node["nacked"]["Listener"] == {"version": bad.version_info, "error": "Address already in use"}
    assert node["acked"]["Listener"] == good.version_info
    (nack,) = env.status.nacks()
    assert (nack["node"], nack["type"], nack["version"], nack["resources"]) == (
        "envoy-1", "Listener", bad.version_info, ["http", "other"])

    env.cache.set_snapshot(GROUP, make_snapshot(listeners={"http": "main"}, clusters={"a": [1, 2]}))
    fixed = await client.recv()
    await client.ack(fixed)
    await client.expect_no_response()
    status = await env.get()
    assert status["last_error"] == [] and status["nacks"] == [] and status["nodes"]["envoy-1"]["nacked"] == {}


async def test_nack_of_a_gone_envoy_clears_when_its_group_moves_on(env: Env):
    env.cache.set_snapshot(GROUP, make_snapshot())
    gone = env.connect("gone")
    await gone.request(CLUSTER)
    bad = await gone.recv()
    await gone.request(CLUSTER, nonce=bad.nonce, error="nope")
    await gone.expect_no_response()
    await gone.close()
    await until(lambda: not env.status.nodes, "the node to disconnect")
    (nack,) = env.status.nacks()
    assert nack["connected"] is False  # still shown: why that Envoy rejected config

    env.cache.set_snapshot(GROUP, make_snapshot(timeouts={"a": 4}))
    other = env.connect("other")
    await other.request(CLUSTER)
    await other.ack(await other.recv())
    await other.expect_no_response()
    assert env.status.nacks() == [] and env.status.last_error == []


async def test_envoys_sharing_a_node_id_are_two_nodes(env: Env, caplog):
    env.cache.set_snapshot(GROUP, make_snapshot())
    one, two, three = env.connect("edge-1"), env.connect("edge-1"), env.connect("solo")
    for client in (one, two, three):
        await client.request(CLUSTER)
        await client.ack(await client.recv())
        await client.expect_no_response()
    status = await env.get()
    nodes = status["nodes"]
    assert len(nodes) == 3
    twins = [n for n in nodes.values() if n["node_id"] == "edge-1"]
    assert len(twins) == 2 and all(n["duplicate_id"] for n in twins)
    assert {k for k, n in nodes.items() if n["node_id"] == "edge-1"} == {n["instance"] for n in twins}
    assert nodes["solo"]["duplicate_id"] is False
    assert any("node.id 'edge-1' is used by 2" in r.getMessage() for r in caplog.records)

    await one.close()
    await until(lambda: len(env.status.nodes) == 2, "one twin to leave")
    status = await env.get()
    assert status["nodes"]["edge-1"]["duplicate_id"] is False


def test_bootstrap_node_id_is_unique_per_envoy(monkeypatch):
    monkeypatch.delenv("POD_NAME", raising=False)
    assert default_node_id() == f"{socket.gethostname()}-{os.getpid()}"
    rendered = render_bootstrap(BootstrapOptions(xds_port=18000))
    assert rendered["node"] == {"id": f"{socket.gethostname()}-{os.getpid()}", "cluster": "edge"}
    monkeypatch.setenv("POD_NAME", "edge-7d9f-abcde")
    assert render_bootstrap(BootstrapOptions(xds_port=18000))["node"]["id"] == "edge-7d9f-abcde"
    assert render_bootstrap(BootstrapOptions(xds_port=18000, node_id="explicit"))["node"]["id"] == "explicit"
