"""Staged (make-before-break) publishing against a real ADS server and Envoy-like gRPC clients,
with the real ControlPlaneStatus as the server's observer."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc
import pytest
from ads_client import (
    AdsClient,
    FakeEnvoy,
    make_cla,
    make_cluster,
    make_listener,
    make_route,
    make_snapshot,
    names_of,
)

from meshgate.controlplane.publish import StagedPublisher
from meshgate.controlplane.status import ControlPlaneStatus, NodeStatus
from meshgate.xds.server import start_xds_server
from meshgate.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    Snapshot,
    SnapshotCache,
)

GROUP = "edge"


@dataclass
class Env:
    cache: SnapshotCache
    status: ControlPlaneStatus
    publisher: StagedPublisher
    server: grpc.aio.Server
    port: int
    envoys: list[FakeEnvoy] = field(default_factory=list)

    async def envoy(self, node_id: str = "envoy-1", reject=None) -> FakeEnvoy:  # noqa: ANN001
        envoy = FakeEnvoy(AdsClient(self.port, node_id=node_id, cluster=GROUP), reject)
        self.envoys.append(envoy)
        return await envoy.start()


async def until(predicate, what: str = "condition"):  # noqa: ANN001
    """Wait (bounded) until predicate() is true: the server and publisher run in this loop."""
    for _ in range(500):
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def in_sync(env: Env) -> bool:
    return env.status.nodes and all(env.status.in_sync(n) for n in env.status.nodes.values())


@pytest.fixture
async def env(caplog):
    cache, status = SnapshotCache(), ControlPlaneStatus()
    server, port = await start_xds_server(cache, status, "127.0.0.1:0")
    e = Env(cache, status, StagedPublisher(cache, GROUP, status), server, port)
    try:
        yield e
    finally:
        await e.publisher.aclose()
        for envoy in e.envoys:
            await envoy.close()
        await server.stop(None)
    errors = [r for r in caplog.records if r.name.startswith("meshgate") and r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


def with_b(**kw) -> Snapshot:
    """Cluster a and a new cluster b, the route moved to b."""
    return make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "b"}, **kw)


async def test_stages_advance_on_acks(env: Env):
    env.publisher.publish(make_snapshot())
    await env.envoy()
    await until(lambda: in_sync(env), "the first config ACKed")

    desired = make_snapshot(clusters={"b": [2]}, routes={"main": "b"})  # a out, b in
    stages = env.publisher.stages(desired)
    assert [sorted(s.snapshot.names(CLUSTER)) for s in stages] == [["a", "b"], ["a", "b"], ["b"]]
    assert env.publisher.publish(desired)
    assert env.status.publish["state"] == "waiting" and env.status.pending_stages == 2
    await until(lambda: env.status.publish["state"] == "done", "the last stage")
    assert env.status.pending_stages == 0 and env.publisher.snapshot == desired
    await until(lambda: in_sync(env), "the final config ACKed")
    assert env.status.publish["of"] == 3


async def test_stage_waits_for_the_new_clusters_endpoints(env: Env):
    """The new cluster's ClusterLoadAssignment must be ACKed, not merely an EDS response of the
    stage's version: in SotW that version also covers a response without it."""
    env.publisher.publish(make_snapshot(clusters={"a": [1]}))
    client = AdsClient(env.port, cluster=GROUP)
    try:
        await client.request(CLUSTER)
        await client.ack(await client.recv())
        await client.request(ENDPOINT, ["a"])
        await client.ack(await client.recv(), ["a"])
        await client.request(LISTENER)
        await client.ack(await client.recv())
        await client.request(ROUTE, ["main"])
        await client.ack(await client.recv(), ["main"])
        await client.expect_no_response()

        # b added, and a's endpoints change too: the stage pushes CDS, then EDS with only "a".
        env.publisher.publish(make_snapshot(clusters={"a": [1, 3], "b": [2]}, routes={"main": "b"}))
        cds, eds = await client.recv(), await client.recv()
        assert (cds.type_url, eds.type_url, names_of(eds)) == (CLUSTER, ENDPOINT, ["a"])
        await client.ack(cds)
        await client.ack(eds, ["a"])
        await client.expect_no_response()
        assert env.status.publish["state"] == "waiting" and env.status.publish["stage"] == 1
        assert env.status.publish["waiting_for"] == ["envoy-1"]

        await client.ack(eds, ["a", "b"])  # Envoy subscribes to the new cluster's endpoints
        eds2 = await client.recv()
        assert names_of(eds2) == ["a", "b"] and eds2.version_info == eds.version_info
        await client.ack(eds2, ["a", "b"])
        lds = await client.recv()  # stage 2 (the final one here): the route moved to b
        assert lds.type_url == ROUTE
        await until(lambda: env.status.publish["state"] == "done", "the last stage")
    finally:
        await client.close()


async def test_nack_stops_the_sequence_and_keeps_old_clusters(env: Env):
    env.publisher.publish(make_snapshot())
    envoy = await env.envoy(reject=lambda r: "bad cluster b" if r.type_url == CLUSTER and "b" in names_of(r) else None)
    await until(lambda: in_sync(env), "the first config ACKed")

    env.publisher.publish(with_b())
    state = await until(lambda: env.status.publish["state"] == "stopped" and env.status.publish, "the stop")
    assert env.status.pending_stages == 0
    assert state["stage"] == 1 and state["of"] == 2
    assert "Envoy node envoy-1 rejected Cluster version" in state["reason"] and "bad cluster b" in state["reason"]
    # Stage 1 stays published; the route still points at a, which every Envoy has.
    assert env.cache.get_snapshot(GROUP).names(ROUTE)["main"] == make_route("main", "a")
    assert envoy.nacked
    assert any("rejected Cluster" in line and "bad cluster b" in line for line in env.status.last_error)

    # The same config again (e.g. an unrelated file edit): the rejected stage is not waited out
    # until the timeout and pushed through, it stops at once.
    env.publisher.timeout = 60
    env.publisher.publish(make_snapshot())  # back to the old config...
    await until(lambda: env.status.publish["state"] == "done", "the old config")
    await until(lambda: in_sync(env), "the old config ACKed")
    env.publisher.publish(with_b())  # ...and the rejected one: a fresh NACK stops it
    await until(lambda: env.status.publish["state"] == "stopped", "the second stop")
    env.publisher.publish(with_b())  # unchanged: no new NACK can come, the old one counts
    state = await until(lambda: env.status.publish["state"] == "stopped" and env.status.publish, "the third stop")
    assert "bad cluster b" in state["reason"]


async def test_timeout_publishes_next_stage_and_says_who(env: Env, caplog):
    env.publisher.timeout = 0.2
    env.publisher.publish(make_snapshot())
    await env.envoy()
    silent = AdsClient(env.port, node_id="silent", cluster=GROUP)  # connected, never ACKs
    env.envoys.append(FakeEnvoy(silent))
    await silent.request(CLUSTER)
    await silent.recv()
    await until(lambda: len(env.status.nodes) == 2 and in_sync(env) is False, "both nodes")

    desired = with_b()
    env.publisher.publish(desired)
    state = await until(lambda: env.status.publish["state"] == "timed_out" and env.status.publish, "the timeout")
    assert state["waiting_for"] == ["silent"] and "silent" in state["reason"]
    assert env.publisher.snapshot == desired and env.status.pending_stages == 0
    assert any("no ACK of stage 1 of 2" in r.getMessage() and "silent" in r.getMessage() for r in caplog.records)


async def test_snapshot_without_listeners_and_later_reloads(env: Env):
    """A config emptied (no listeners, routes or clusters) is a valid stage target, and the
    reload after it still works."""
    env.publisher.publish(make_snapshot())
    await env.envoy()
    await until(lambda: in_sync(env), "the first config ACKed")

    empty = Snapshot.build({})
    env.publisher.publish(empty)
    await until(lambda: env.status.publish["state"] == "done", "the empty config")
    assert env.publisher.snapshot == empty

    only_clusters = Snapshot.build({CLUSTER: {"a": make_cluster("a")}, ENDPOINT: {"a": make_cla("a", [1])}})
    env.publisher.publish(only_clusters)
    await until(lambda: env.status.publish["state"] == "done", "clusters without listeners")
    assert env.publisher.snapshot == only_clusters
    env.publisher.publish(make_snapshot())
    await until(lambda: env.publisher.snapshot == make_snapshot(), "the full config again")


async def test_newer_publish_cancels_waiting_sequence(env: Env):
    env.publisher.publish(make_snapshot())
    # Rejects the first sequence's stage 1 only, so that sequence waits (stopped) forever.
    await env.envoy(reject=lambda r: "no" if r.type_url == CLUSTER and names_of(r) == ["a", "b"] else None)
    await until(lambda: in_sync(env), "the first config ACKed")
    env.publisher.timeout = 60
    env.publisher.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
    first = env.publisher._task
    env.publisher.publish(make_snapshot(clusters={"a": [1], "c": [3]}, routes={"main": "c"}))
    await until(lambda: first.done(), "the first sequence to end")
    assert first.cancelled()
    await until(lambda: env.status.publish["state"] == "done", "the newer config")
    assert env.publisher.snapshot.names(ROUTE)["main"] == make_route("main", "c")


async def test_aclose_cancels_and_errors_are_logged(env: Env, caplog):
    env.publisher.publish(make_snapshot())
    await env.envoy(reject=lambda r: None)
    silent = AdsClient(env.port, node_id="silent", cluster=GROUP)
    env.envoys.append(FakeEnvoy(silent))
    await silent.request(CLUSTER)
    await silent.recv()
    await until(lambda: len(env.status.nodes) == 2, "both nodes")
    env.publisher.timeout = 60
    env.publisher.publish(with_b())
    task = env.publisher._task
    assert env.status.publish["state"] == "waiting"
    await env.publisher.aclose()
    assert task.cancelled() and env.status.publish["state"] == "stopped" and env.status.pending_stages == 0

    # A failing stage task is logged, and /status says the publish stopped.
    def broken(*args):
        raise RuntimeError("bug in a stage")

    env.publisher._wait_for_acks = broken
    env.publisher.publish(make_snapshot(clusters={"a": [1], "c": [3]}, routes={"main": "c"}))
    await until(lambda: env.status.publish["state"] == "stopped", "the failure to show")
    assert "bug in a stage" in env.status.publish["reason"]
    failures = [r for r in caplog.records if r.getMessage() == "staged publish failed"]
    assert len(failures) == 1
    caplog.records.remove(failures[0])  # expected here; the fixture fails on any other error


def test_stages_handle_missing_types():
    status = ControlPlaneStatus()
    publisher = StagedPublisher(SnapshotCache(), GROUP, status)
    publisher.snapshot = Snapshot.build({CLUSTER: {"a": make_cluster("a")}, ENDPOINT: {"a": make_cla("a", [1])}})
    node = status.nodes["n#1"] = NodeStatus("n", GROUP, "n#1")  # a connected node running a
    node.resources[CLUSTER] = {"a": publisher.snapshot.resource_version(CLUSTER, "a")}
    node.pushed["Cluster"] = "v1"
    desired = Snapshot.build({
        CLUSTER: {"b": make_cluster("b")}, ENDPOINT: {"b": make_cla("b", [2])},
        LISTENER: {"http": make_listener("http", "main")}, ROUTE: {"main": make_route("main", "b")}})
    stages = publisher.stages(desired)
    for stage in stages:
        stage.snapshot.check_consistent()
    assert [sorted(s.snapshot.names(CLUSTER)) for s in stages] == [["a", "b"], ["a", "b"], ["b"]]
    assert [sorted(s.snapshot.names(LISTENER)) for s in stages] == [[], ["http"], ["http"]]
    # And the other way round: everything but clusters goes.
    publisher.snapshot = desired
    node.resources[CLUSTER] = {"b": desired.resource_version(CLUSTER, "b")}
    stages = publisher.stages(Snapshot.build({}))
    for stage in stages:
        stage.snapshot.check_consistent()
    assert [sorted(s.snapshot.names(CLUSTER)) for s in stages] == [["b"], []]


# ---- the real reload pipeline ---------------------------------------------------------------------

CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: 18080}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: {backend}}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{value: /app}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: {backend}}}]
"""


async def test_control_plane_reload_is_staged_end_to_end(env: Env, tmp_path):
    """ControlPlane (files -> snapshot) -> StagedPublisher -> ADS server -> gRPC client, with the
    real ControlPlaneStatus in between: ACKs advance the stages, a NACK stops them."""
    from meshgate.controlplane.pipeline import ControlPlane

    config = tmp_path / "edge.yaml"
    config.write_text(CONFIG.format(backend="v1", port=9001))
    plane = ControlPlane([str(tmp_path)], env.cache, group=GROUP, status=env.status)
    env.publisher = plane.publisher  # the fixture closes it
    assert plane.reload()
    rejecting = {"on": False}
    await env.envoy(reject=lambda r: "cluster rejected" if rejecting["on"] and r.type_url == CLUSTER else None)
    await until(lambda: in_sync(env), "the first config ACKed")
    first_clusters = sorted(plane.snapshot.names(CLUSTER))

    # The route moves to a new Backend: its cluster comes first, the old one goes last.
    config.write_text(CONFIG.format(backend="v2", port=9002))
    assert plane.reload()
    seen = [sorted(plane.snapshot.names(CLUSTER))]
    assert len(seen[0]) == 2 and set(first_clusters) < set(seen[0])
    await until(lambda: env.status.publish["state"] == "done", "every stage")
    assert env.status.publish["of"] == 3 and env.status.pending_stages == 0
    await until(lambda: in_sync(env), "the final config ACKed")
    final_clusters = sorted(plane.snapshot.names(CLUSTER))
    assert len(final_clusters) == 1 and final_clusters[0] not in first_clusters

    # Envoy rejects the next cluster: the sequence stops at stage 1, the old cluster stays.
    rejecting["on"] = True
    config.write_text(CONFIG.format(backend="v3", port=9003))
    assert plane.reload()
    state = await until(lambda: env.status.publish["state"] == "stopped" and env.status.publish, "the stop")
    assert state["stage"] == 1 and "cluster rejected" in state["reason"] and env.status.pending_stages == 0
    assert set(final_clusters) < set(plane.snapshot.names(CLUSTER))
    assert any("rejected Cluster" in line for line in env.status.as_json()["last_error"])


async def test_clients_without_clusters_are_not_waited_for(env: Env):
    """A companion reading only its own config type over ADS never ACKs clusters: it must not
    hold stages back until the timeout."""
    env.publisher.timeout = 60
    env.publisher.publish(make_snapshot())
    await env.envoy()
    companion = AdsClient(env.port, node_id="companion", cluster=GROUP)
    env.envoys.append(FakeEnvoy(companion))
    await companion.request("type.googleapis.com/google.protobuf.StringValue")
    await companion.ack(await companion.recv())
    await until(lambda: len(env.status.nodes) == 2 and in_sync(env), "both ACKed")
    env.publisher.publish(with_b())
    await until(lambda: env.status.publish["state"] == "done", "the stages")
