"""The ADS server against a real gRPC client playing Envoy: one test per xDS protocol rule."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from ads_client import (
    PROBE_PREFIX,
    AdsClient,
    make_cla,
    make_cluster,
    make_listener,
    make_route,
    make_secret,
    make_snapshot,
    make_tls_listener,
    names_of,
    sds_tls_socket,
)
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import wrappers_pb2

from meshgate.xds.server import AdsServer, NodeRef, NullObserver, start_xds_server
from meshgate.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    InconsistentSnapshot,
    Snapshot,
    SnapshotCache,
)

GROUP = "edge"  # AdsClient's node.cluster, which the default group_of uses


class RecordingObserver(NullObserver):
    """Records every observer event. Subclassing NullObserver keeps it complete: a method the
    server calls and this class lacks would be a logged AttributeError, which fails the test."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.refs: list[NodeRef] = []

    def on_stream_open(self, node):
        self.refs.append(node)
        self.events.append(("open", node.node_id, node.group, node.kind))

    def on_stream_close(self, node):
        self.events.append(("close", node.node_id, node.group, node.kind))

    def on_push(self, node, type_url, version, resources):
        self.events.append(("push", node.node_id, type_url, version, len(resources)))

    def on_ack(self, node, type_url, version, resources):
        self.events.append(("ack", node.node_id, type_url, version))
        self.events.append(("acked", node.node_id, type_url, dict(resources)))

    def on_nack(self, node, type_url, version, error, names):
        self.events.append(("nack", node.node_id, type_url, version, error))

    def on_unsubscribe(self, node, type_url, names):
        self.events.append(("unsubscribe", node.node_id, type_url, list(names)))

    def on_snapshot_sent(self, node, snapshot_version):
        self.events.append(("sent", node.node_id, snapshot_version))

    def of(self, kind: str) -> list[tuple]:
        """Events of one kind, leaving out those about probe requests (expect_no_response)."""
        return [e for e in self.events
                if e[0] == kind and not (len(e) > 2 and str(e[2]).startswith(PROBE_PREFIX))]


@dataclass
class Env:
    cache: SnapshotCache
    observer: RecordingObserver
    server: grpc.aio.Server
    port: int
    clients: list[AdsClient] = field(default_factory=list)

    def connect(self, *, delta: bool = False, node_id: str = "envoy-1") -> AdsClient:
        client = AdsClient(self.port, delta=delta, node_id=node_id, cluster=GROUP)
        self.clients.append(client)
        return client

    def publish(self, snapshot: Snapshot) -> bool:
        return self.cache.set_snapshot(GROUP, snapshot)


@pytest.fixture
async def env(caplog):
    cache = SnapshotCache()
    observer = RecordingObserver()
    server, port = await start_xds_server(cache, observer, "127.0.0.1:0")
    e = Env(cache, observer, server, port)
    try:
        yield e
    finally:
        for client in e.clients:
            await client.close()
        await server.stop(None)
    # The server logs (and survives) a failing observer or request handler; in tests that is a
    # bug to report, not to hide.
    errors = [r for r in caplog.records if r.name.startswith("meshgate") and r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


async def until(predicate, what: str = "condition"):
    """Wait (bounded) until predicate() is true; the server runs in this event loop."""
    for _ in range(300):
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def _subscribe_all(client: AdsClient, snap: Snapshot) -> dict[str, object]:
    """Do Envoy's startup dance: CDS, EDS, LDS, RDS, each ACKed. Returns last response per type."""
    got = {}
    await client.request(CLUSTER)
    got[CLUSTER] = await client.recv()
    await client.ack(got[CLUSTER])
    await client.request(ENDPOINT, sorted(snap.names(ENDPOINT)))
    got[ENDPOINT] = await client.recv()
    await client.ack(got[ENDPOINT], sorted(snap.names(ENDPOINT)))
    await client.request(LISTENER)
    got[LISTENER] = await client.recv()
    await client.ack(got[LISTENER])
    await client.request(ROUTE, sorted(snap.names(ROUTE)))
    got[ROUTE] = await client.recv()
    await client.ack(got[ROUTE], sorted(snap.names(ROUTE)))
    await client.expect_no_response()
    return got


# ---- state of the world ------------------------------------------------------------------------


async def test_initial_push_each_type(env: Env):
    snap = make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"})
    env.publish(snap)
    client = env.connect()
    got = await _subscribe_all(client, snap)

    assert names_of(got[CLUSTER]) == ["a", "b"]
    assert got[CLUSTER].version_info == snap.type_version(CLUSTER)
    assert names_of(got[ENDPOINT]) == ["a", "b"]
    assert names_of(got[LISTENER]) == ["http"]
    assert names_of(got[ROUTE]) == ["main"]
    nonces = [r.nonce for r in got.values()]
    assert all(nonces) and len(set(nonces)) == 4
    assert ("open", "envoy-1", GROUP, "sotw") in env.observer.events
    assert len(env.observer.of("push")) == 4


async def test_ack_is_not_answered(env: Env):
    env.publish(make_snapshot())
    client = env.connect()
    await client.request(CLUSTER)
    resp = await client.recv()
    await client.ack(resp)
    await client.expect_no_response()
    assert ("ack", "envoy-1", CLUSTER, resp.version_info) in env.observer.events


async def test_nack_recorded_not_resent_then_new_version(env: Env, caplog):
    env.publish(make_snapshot())
    client = env.connect()
    await client.request(CLUSTER)
    resp = await client.recv()
    with caplog.at_level(logging.WARNING, logger="meshgate.xds.server"):
        await client.request(CLUSTER, nonce=resp.nonce, version="", error="bad cluster")
        await client.expect_no_response()
    assert env.observer.of("nack") == [
        ("nack", "envoy-1", CLUSTER, resp.version_info, "bad cluster")]
    assert any("NACK" in r.message and "bad cluster" in r.message and "envoy-1" in r.message
               for r in caplog.records)

    newer = make_snapshot(timeouts={"a": 5})
    env.publish(newer)
    resp2 = await client.recv()
    assert resp2.type_url == CLUSTER
    assert resp2.version_info == newer.type_version(CLUSTER) != resp.version_info
    assert resp2.nonce != resp.nonce


async def test_request_after_nack_with_old_version_is_not_an_ack(env: Env):
    """After a NACK, Envoy's next requests echo the latest nonce with the version it still runs
    (e.g. when its subscription changes): that must not count as an ACK of anything."""
    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
    client = env.connect()
    await client.request(ENDPOINT, ["a"])
    good = await client.recv()
    await client.ack(good, ["a"])
    await client.expect_no_response()  # the ACK is handled before the next publish
    env.publish(make_snapshot(clusters={"a": [1, 3], "b": [2]}, routes={"main": "a"}))
    bad = await client.recv()
    await client.request(ENDPOINT, ["a"], nonce=bad.nonce, version=good.version_info, error="bad endpoints")
    # Same nonce, old version, no error: a subscription change, not an ACK.
    await client.request(ENDPOINT, ["a"], nonce=bad.nonce, version=good.version_info)
    # Same nonce and even the NACKed version: that nonce was settled by the NACK already.
    await client.request(ENDPOINT, ["a"], nonce=bad.nonce, version=bad.version_info)
    await client.expect_no_response()
    assert env.observer.of("ack") == [("ack", "envoy-1", ENDPOINT, good.version_info)]
    assert env.observer.of("nack") == [("nack", "envoy-1", ENDPOINT, bad.version_info, "bad endpoints")]


async def test_ack_reports_what_the_response_carried(env: Env):
    """One SotW version can cover responses with different names (here EDS: the version is per
    type, the names per request), so ACKs are reported per resource, not per version."""
    snap = make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"})
    env.publish(snap)
    client = env.connect()
    await client.request(ENDPOINT, ["a"])
    r1 = await client.recv()
    await client.ack(r1, ["a"])
    await client.ack(r1, ["a", "b"])
    r2 = await client.recv()
    assert r2.version_info == r1.version_info and names_of(r2) == ["a", "b"]
    await client.ack(r2, ["a", "b"])
    await client.request(ENDPOINT, ["b"], nonce=r2.nonce, version=r2.version_info)  # drops "a"
    await client.expect_no_response()
    v = {n: snap.resource_version(ENDPOINT, n) for n in ("a", "b")}
    assert env.observer.of("acked") == [
        ("acked", "envoy-1", ENDPOINT, {"a": v["a"]}),
        ("acked", "envoy-1", ENDPOINT, {"a": v["a"], "b": v["b"]}),
    ]
    assert env.observer.of("unsubscribe") == [("unsubscribe", "envoy-1", ENDPOINT, ["a"])]


async def test_delta_ack_reports_accumulated_resources(env: Env):
    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
    client = env.connect(delta=True)
    await client.delta_request(CLUSTER)
    r1 = await client.recv()
    await client.delta_request(CLUSTER, nonce=r1.nonce)
    newer = make_snapshot(clusters={"a": [1]}, routes={"main": "a"}, timeouts={"a": 3})
    env.publish(newer)
    r2 = await client.recv()
    assert names_of(r2) == ["a"] and list(r2.removed_resources) == ["b"]
    await client.delta_request(CLUSTER, nonce=r2.nonce)
    await client.delta_request(CLUSTER, nonce=r2.nonce)  # settled: not a second ACK
    await client.expect_no_response()
    acked = env.observer.of("acked")
    assert len(acked) == 2
    assert acked[-1] == ("acked", "envoy-1", CLUSTER, {"a": newer.resource_version(CLUSTER, "a")})


async def test_stale_nonce_is_ignored(env: Env):
    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
    client = env.connect()
    await client.request(ENDPOINT, ["a"])
    first = await client.recv()
    env.publish(make_snapshot(clusters={"a": [1, 3], "b": [2]}, routes={"main": "a"}))
    second = await client.recv()
    assert second.nonce != first.nonce

    # A request answering the superseded response, even one adding a name, gets nothing.
    await client.request(ENDPOINT, ["a", "b"], nonce=first.nonce, version=first.version_info)
    await client.expect_no_response()
    # The same request with the current nonce is answered.
    await client.request(ENDPOINT, ["a", "b"], nonce=second.nonce, version=second.version_info)
    third = await client.recv()
    assert names_of(third) == ["a", "b"]


async def test_stream_without_node_is_rejected(env: Env):
    env.publish(make_snapshot())
    client = env.connect()
    await client.request(CLUSTER, send_node=False)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_names_added_are_answered_same_names_are_not(env: Env):
    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
    client = env.connect()
    await client.request(ENDPOINT, ["a"])
    resp = await client.recv()
    assert names_of(resp) == ["a"]
    await client.ack(resp, ["a"])
    await client.expect_no_response()

    await client.ack(resp, ["a", "b"])
    resp2 = await client.recv()
    assert names_of(resp2) == ["a", "b"]  # SotW: the whole requested set, each name once
    await client.ack(resp2, ["a", "b"])
    await client.expect_no_response()


async def test_resources_requested_before_they_exist(env: Env):
    env.publish(make_snapshot(clusters={"a": [1]}))
    client = env.connect()
    # None of the requested names exist yet: wait.
    await client.request(ROUTE, ["later"])
    await client.expect_no_response()
    # Some exist: send those.
    await client.request(ENDPOINT, ["a", "c"])
    resp = await client.recv()
    assert names_of(resp) == ["a"]
    await client.ack(resp, ["a", "c"])

    env.publish(make_snapshot(clusters={"a": [1], "c": [3]}, listeners={"http": "later"},
                              routes={"later": "c"}))
    got = {}
    for _ in range(2):
        r = await client.recv()
        got[r.type_url] = r
    assert names_of(got[ENDPOINT]) == ["a", "c"]
    assert names_of(got[ROUTE]) == ["later"]


async def test_identical_snapshot_pushes_nothing(env: Env):
    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
    client = env.connect()
    await client.request(CLUSTER)
    await client.ack(await client.recv())
    await client.request(ENDPOINT, ["a"])
    await client.ack(await client.recv(), ["a"])
    await client.expect_no_response()

    # Rebuilt from fresh messages, same content: same version, nobody woken.
    assert env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"})) is False
    await client.expect_no_response()
    # Only endpoints of "b" change; this client only watches "a": nothing to send.
    assert env.publish(make_snapshot(clusters={"a": [1], "b": [2, 4]}, routes={"main": "a"}))
    await client.expect_no_response()


async def test_push_order_is_cds_eds_lds_rds(env: Env):
    snap = make_snapshot(clusters={"a": [1]}, routes={"main": "a"})
    env.publish(snap)
    client = env.connect()
    # Subscribe in the "wrong" order; pushes must still come make-before-break.
    await client.request(ROUTE, ["main"])
    await client.ack(await client.recv(), ["main"])
    await client.request(LISTENER)
    await client.ack(await client.recv())
    await client.request(ENDPOINT, ["a"])
    await client.ack(await client.recv(), ["a"])
    await client.request(CLUSTER)
    await client.ack(await client.recv())
    # New clusters warm until they get EDS, so EDS follows the first CDS response (envoy#13009).
    eds = await client.recv()
    assert eds.type_url == ENDPOINT
    await client.ack(eds, ["a"])
    await client.expect_no_response()

    changed = Snapshot.build({
        CLUSTER: {"a": make_cluster("a", 7)},
        ENDPOINT: {"a": make_cla("a", [1, 2])},
        LISTENER: {"http": make_listener("http", "main", port=10080)},
        ROUTE: {"main": make_route("main", "a", domain="example.com")},
    })
    env.publish(changed)
    order = [(await client.recv()).type_url for _ in range(4)]
    assert order == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


async def test_eds_resent_when_cluster_changes(env: Env):
    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
    client = env.connect()
    await client.request(CLUSTER)
    await client.ack(await client.recv())
    await client.request(ENDPOINT, ["a", "b"])
    eds1 = await client.recv()
    await client.ack(eds1, ["a", "b"])
    await client.expect_no_response()

    # Only cluster "a" changes (connect timeout); endpoints are identical.
    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"},
                              timeouts={"a": 9}))
    cds = await client.recv()
    assert cds.type_url == CLUSTER
    eds2 = await client.recv()
    assert eds2.type_url == ENDPOINT
    assert names_of(eds2) == ["a", "b"]
    assert eds2.nonce != eds1.nonce and eds2.version_info != eds1.version_info


async def test_late_joiner_gets_current_snapshot(env: Env):
    env.publish(make_snapshot(clusters={"a": [1]}))
    early = env.connect(node_id="early")
    await early.request(CLUSTER)
    await early.ack(await early.recv())

    current = make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "b"})
    env.publish(current)
    assert names_of(await early.recv()) == ["a", "b"]

    late = env.connect(node_id="late")
    await late.request(CLUSTER)
    resp = await late.recv()
    assert names_of(resp) == ["a", "b"]
    assert resp.version_info == current.type_version(CLUSTER)


async def test_waits_for_first_snapshot_and_groups_are_separate(env: Env):
    client = env.connect()
    await client.request(CLUSTER)
    # The stream is open (so its first request is handled) with no snapshot for its group yet.
    await until(lambda: env.observer.of("open"))
    env.cache.set_snapshot("other-group", make_snapshot(clusters={"x": [1]}, routes={"main": "x"}))
    env.publish(make_snapshot(clusters={"a": [1]}))
    # The first response is the group's snapshot: nothing was sent before it, nor from the other.
    assert names_of(await client.recv()) == ["a"]


async def test_cluster_removal_sends_full_state(env: Env):
    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
    client = env.connect()
    await client.request(CLUSTER)
    await client.ack(await client.recv())
    env.publish(make_snapshot(clusters={"a": [1]}, routes={"main": "a"}))
    resp = await client.recv()
    assert names_of(resp) == ["a"]  # "b" missing from a CDS response = deleted


async def test_reconnect_with_empty_nonce_is_answered(env: Env):
    env.publish(make_snapshot())
    client = env.connect()
    await client.request(CLUSTER)
    resp = await client.recv()
    await client.close()
    again = env.connect()
    await again.request(CLUSTER, version=resp.version_info)  # Envoy resends its version
    assert names_of(await again.recv()) == ["a"]


async def test_streams_end_cleanly_when_server_stops(env: Env):
    env.publish(make_snapshot())
    sotw, delta = env.connect(), env.connect(delta=True, node_id="d")
    await sotw.request(CLUSTER)
    await sotw.recv()
    await delta.delta_request(CLUSTER)
    await delta.recv()
    await env.server.stop(None)
    for client in (sotw, delta):
        with pytest.raises((grpc.aio.AioRpcError, EOFError)):
            await client.recv()
    closes = await until(lambda: len(env.observer.of("close")) == 2 and env.observer.of("close"))
    assert {c[1] for c in closes} == {"envoy-1", "d"}
    leftover = [t for t in asyncio.all_tasks()
                if t is not asyncio.current_task() and "_read_requests" in repr(t)]
    assert leftover == []


async def test_stream_state_freed_on_disconnect(env: Env):
    servicer = AdsServer(env.cache)
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        env.publish(make_snapshot())
        client = AdsClient(port, cluster=GROUP)
        await client.request(CLUSTER)
        await client.recv()
        assert servicer.stream_count == 1
        await client.close()
        for _ in range(100):
            if servicer.stream_count == 0:
                break
            await asyncio.sleep(0.02)
        assert servicer.stream_count == 0
        assert env.cache._watches == {}
    finally:
        await server.stop(None)


# ---- delta -------------------------------------------------------------------------------------


async def test_delta_initial_wildcard(env: Env):
    snap = make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"})
    env.publish(snap)
    client = env.connect(delta=True)
    await client.delta_request(CLUSTER)  # no names: legacy wildcard
    resp = await client.recv()
    assert resp.nonce
    assert [(r.name, r.version) for r in resp.resources] == [
        ("a", snap.resource_version(CLUSTER, "a")), ("b", snap.resource_version(CLUSTER, "b"))]
    assert resp.system_version_info == snap.type_version(CLUSTER)
    await client.delta_request(CLUSTER, nonce=resp.nonce)
    await client.expect_no_response()
    assert ("ack", "envoy-1", CLUSTER, resp.system_version_info) in env.observer.events
    assert ("open", "envoy-1", GROUP, "delta") in env.observer.events


async def test_delta_explicit_wildcard_on_empty_type(env: Env):
    env.publish(make_snapshot(clusters={}, listeners={}, routes={}))
    client = env.connect(delta=True)
    await client.delta_request(CLUSTER, ["*"])
    resp = await client.recv()  # "no clusters" is an answer Envoy waits for
    assert list(resp.resources) == [] and resp.nonce


async def test_delta_subscribe_unsubscribe(env: Env):
    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
    client = env.connect(delta=True)
    await client.delta_request(ENDPOINT, ["a"])
    r1 = await client.recv()
    assert names_of(r1) == ["a"]
    await client.delta_request(ENDPOINT, nonce=r1.nonce)
    await client.delta_request(ENDPOINT, ["b"])
    r2 = await client.recv()
    assert names_of(r2) == ["b"]  # only the new one
    await client.delta_request(ENDPOINT, nonce=r2.nonce)
    await client.delta_request(ENDPOINT, unsubscribe=["a"])
    await client.expect_no_response()  # unsubscribing needs no answer

    env.publish(make_snapshot(clusters={"a": [1, 5], "b": [2]}, routes={"main": "a"}))
    await client.expect_no_response()  # "a" is no longer watched
    env.publish(make_snapshot(clusters={"a": [1, 5], "b": [2, 6]}, routes={"main": "a"}))
    r3 = await client.recv()
    assert names_of(r3) == ["b"]

    # Subscription changes carried by a request with a stale nonce still apply.
    await client.delta_request(ENDPOINT, ["a"], nonce=r1.nonce)
    r4 = await client.recv()
    assert names_of(r4) == ["a"]


async def test_delta_removed_resources(env: Env):
    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
    client = env.connect(delta=True)
    await client.delta_request(CLUSTER)
    r1 = await client.recv()
    await client.delta_request(CLUSTER, nonce=r1.nonce)

    env.publish(make_snapshot(clusters={"a": [1]}, routes={"main": "a"}))
    r2 = await client.recv()
    assert list(r2.removed_resources) == ["b"] and list(r2.resources) == []

    # A subscribed name that doesn't exist is reported as removed, once.
    await client.delta_request(ENDPOINT, ["ghost", "a"])
    r3 = await client.recv()
    assert names_of(r3) == ["a"] and list(r3.removed_resources) == ["ghost"]
    await client.delta_request(ENDPOINT, nonce=r3.nonce)
    await client.expect_no_response()


async def test_delta_initial_resource_versions_seed(env: Env):
    snap = make_snapshot(clusters={"a": [1], "b": [2], "c": [3]}, routes={"main": "a"})
    env.publish(snap)
    client = env.connect(delta=True)
    await client.delta_request(CLUSTER, initial={
        "a": snap.resource_version(CLUSTER, "a"),  # current: not resent
        "b": "outdated",  # differs: resent
        "gone": "whatever",  # no longer exists: removed
    })
    resp = await client.recv()
    assert names_of(resp) == ["b", "c"]
    assert list(resp.removed_resources) == ["gone"]


async def test_delta_wildcard_plus_unsubscribe_of_covered_name(env: Env):
    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
    client = env.connect(delta=True)
    await client.delta_request(CLUSTER, ["*", "a"])
    r1 = await client.recv()
    assert names_of(r1) == ["a", "b"]
    await client.delta_request(CLUSTER, nonce=r1.nonce)
    await client.expect_no_response()

    # "a" is still covered by the wildcard: the client must be told it stays.
    await client.delta_request(CLUSTER, unsubscribe=["a"])
    r2 = await client.recv()
    assert names_of(r2) == ["a"] and list(r2.removed_resources) == []
    # A name not covered by the wildcard is answered with a removal.
    await client.delta_request(CLUSTER, ["zz"])
    r3 = await client.recv()
    assert list(r3.removed_resources) == ["zz"]
    await client.delta_request(CLUSTER, unsubscribe=["zz"])
    r4 = await client.recv()
    assert list(r4.removed_resources) == ["zz"]


async def test_delta_nack_recorded_not_resent(env: Env, caplog):
    env.publish(make_snapshot())
    client = env.connect(delta=True)
    await client.delta_request(CLUSTER)
    r1 = await client.recv()
    with caplog.at_level(logging.WARNING, logger="meshgate.xds.server"):
        await client.delta_request(CLUSTER, nonce=r1.nonce, error="nope")
        await client.expect_no_response()
    assert env.observer.of("nack") == [
        ("nack", "envoy-1", CLUSTER, r1.system_version_info, "nope")]
    assert any("NACK" in r.message for r in caplog.records)
    newer = make_snapshot(timeouts={"a": 4})
    env.publish(newer)
    r2 = await client.recv()
    assert names_of(r2) == ["a"]
    assert r2.resources[0].version == newer.resource_version(CLUSTER, "a")


async def test_delta_eds_resent_when_cluster_changes(env: Env):
    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
    client = env.connect(delta=True)
    await client.delta_request(CLUSTER)
    await client.delta_request(CLUSTER, nonce=(await client.recv()).nonce)
    await client.delta_request(ENDPOINT, ["a", "b"])
    await client.delta_request(ENDPOINT, nonce=(await client.recv()).nonce)
    await client.expect_no_response()

    env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"},
                              timeouts={"b": 3}))
    cds = await client.recv()
    assert cds.type_url == CLUSTER and names_of(cds) == ["b"]
    eds = await client.recv()
    assert eds.type_url == ENDPOINT and names_of(eds) == ["b"]


async def test_delta_forgets_removed_resources(env: Env):
    """A removal sent for a name the client only had through the wildcard is not remembered:
    otherwise every deletion would stay in the stream's state for its whole life."""
    servicer = AdsServer(env.cache)
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = AdsClient(port, delta=True, cluster=GROUP)
    try:
        env.publish(make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "a"}))
        await client.delta_request(CLUSTER)
        r1 = await client.recv()
        await client.delta_request(CLUSTER, nonce=r1.nonce)
        await client.delta_request(ENDPOINT, ["a", "ghost"])
        await client.recv()
        env.publish(make_snapshot(clusters={"a": [1]}, routes={"main": "a"}))
        r2 = await client.recv()
        assert list(r2.removed_resources) == ["b"]
        await client.delta_request(CLUSTER, nonce=r2.nonce)
        await client.expect_no_response()
        (stream,) = servicer._streams
        assert stream.types[CLUSTER].known == {"a": env.cache.get_snapshot(GROUP).resource_version(CLUSTER, "a")}
        assert stream.types[CLUSTER].pending == {}
        # An explicitly subscribed missing name is remembered (so "doesn't exist" isn't repeated).
        assert stream.types[ENDPOINT].known["ghost"] is None
    finally:
        await client.close()
        await server.stop(None)


COMPANION = "type.googleapis.com/google.protobuf.StringValue"  # stands for e.g. RateLimitConfig


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_companion_types_are_full_state(env: Env, delta: bool):
    """A type that isn't RDS/EDS/SDS/VHDS is full state in SotW: a name missing from a response
    is deleted, so a removal must be sent (and an empty set is an answer)."""
    def snap(*names):
        base = make_snapshot()
        return Snapshot.build({**base.resources, COMPANION: {n: wrappers_pb2.StringValue(value=n) for n in names}})

    env.publish(snap("x", "y"))
    client = env.connect(delta=delta)
    if delta:
        await client.delta_request(COMPANION)
    else:
        await client.request(COMPANION)
    r1 = await client.recv()
    assert sorted(r.name for r in r1.resources) == ["x", "y"] if delta else len(r1.resources) == 2
    if delta:
        await client.delta_request(COMPANION, nonce=r1.nonce)
    else:
        await client.ack(r1)
    env.publish(snap("x"))
    r2 = await client.recv()
    if delta:
        assert list(r2.removed_resources) == ["y"]
    else:
        assert [wrappers_pb2.StringValue.FromString(r.value).value for r in r2.resources] == ["x"]
        await client.ack(r2)
        env.publish(snap())
        r3 = await client.recv()  # "none left" is an answer too
        assert list(r3.resources) == [] and r3.version_info == ""


async def test_secrets_are_named_and_sent_first(env: Env):
    """SDS over ADS: secrets are requested by name, pushed before the clusters and listeners
    whose TLS uses them, and (a named type) not deleted by an empty response."""
    def snap(cert: bytes, timeout: int = 1):
        return Snapshot.build({
            SECRET: {"cert": make_secret("cert", cert)},
            CLUSTER: {"a": make_cluster("a", timeout)}, ENDPOINT: {"a": make_cla("a", [1])},
            LISTENER: {"https": make_tls_listener("https", "main", "cert")},
            ROUTE: {"main": make_route("main", "a")}})

    env.publish(snap(b"v1"))
    client = env.connect()
    for type_url, names in ((LISTENER, []), (ROUTE, ["main"]), (CLUSTER, []), (ENDPOINT, ["a"]),
                            (SECRET, ["cert"])):
        await client.request(type_url, names)
        await client.ack(await client.recv(), names)
    await client.expect_no_response()

    env.publish(snap(b"v2", timeout=2))  # rotated certificate and a changed cluster
    order = [(await client.recv()) for _ in range(3)]
    assert [r.type_url for r in order] == [SECRET, CLUSTER, ENDPOINT]
    assert names_of(order[0]) == ["cert"]
    for r, names in zip(order, (["cert"], [], ["a"])):
        await client.ack(r, names)
    # Unsubscribing the secret needs no answer (no empty "you have no secrets" response).
    await client.request(SECRET, [], nonce=order[0].nonce, version=order[0].version_info)
    await client.expect_no_response()


async def test_same_node_id_on_two_streams_are_two_nodes(env: Env, caplog):
    env.publish(make_snapshot())
    one, two = env.connect(node_id="edge-1"), env.connect(node_id="edge-1")
    with caplog.at_level(logging.WARNING, logger="meshgate.xds.server"):
        for client in (one, two):
            await client.request(CLUSTER)
            await client.ack(await client.recv())
            await client.expect_no_response()
    refs = env.observer.refs
    assert [r.node_id for r in refs] == ["edge-1", "edge-1"]
    assert len({r.instance for r in refs}) == 2
    assert any("node.id 'edge-1' is used by 2 open xDS streams" in r.getMessage() for r in caplog.records)


async def test_broken_observer_is_logged_and_stream_survives(caplog):
    class Broken(NullObserver):
        def on_push(self, node, type_url, version, resources):
            raise RuntimeError("observer bug")

    cache = SnapshotCache()
    cache.set_snapshot(GROUP, make_snapshot())
    server, port = await start_xds_server(cache, Broken(), "127.0.0.1:0")
    client = AdsClient(port, cluster=GROUP)
    try:
        await client.request(CLUSTER)
        assert names_of(await client.recv()) == ["a"]
    finally:
        await client.close()
        await server.stop(None)
    assert any(r.levelno == logging.ERROR and "observer on_push failed" in r.getMessage() for r in caplog.records)


# ---- snapshot ----------------------------------------------------------------------------------


def test_inconsistent_snapshot_refused_old_one_kept():
    cache = SnapshotCache()
    good = make_snapshot()
    assert cache.set_snapshot("g", good)
    missing_eds = Snapshot.build({
        CLUSTER: {"a": make_cluster("a")},
        LISTENER: {"http": make_listener("http", "main")},
        ROUTE: {"main": make_route("main", "a")},
    })
    with pytest.raises(InconsistentSnapshot, match="ClusterLoadAssignment 'a'"):
        cache.set_snapshot("g", missing_eds)
    missing_rds = Snapshot.build({
        CLUSTER: {"a": make_cluster("a")},
        ENDPOINT: {"a": make_cla("a", [1])},
        LISTENER: {"http": make_listener("http", "nope")},
    })
    with pytest.raises(InconsistentSnapshot, match="RouteConfiguration 'nope'"):
        cache.set_snapshot("g", missing_rds)
    orphans = Snapshot.build({
        ENDPOINT: {"x": make_cla("x", [1])}, ROUTE: {"r": make_route("r", "x")}})
    with pytest.raises(InconsistentSnapshot) as err:
        cache.set_snapshot("g", orphans)
    assert len(err.value.problems) == 2
    assert cache.get_snapshot("g") is good


def test_sds_references_are_checked():
    def snap(secrets, *, listener_secret="cert", cluster_secret=None):
        cluster = make_cluster("a")
        if cluster_secret:
            cluster.transport_socket.CopyFrom(sds_tls_socket(cluster_secret, upstream=True))
        return Snapshot.build({
            SECRET: {n: make_secret(n) for n in secrets},
            CLUSTER: {"a": cluster}, ENDPOINT: {"a": make_cla("a", [1])},
            LISTENER: {"https": make_tls_listener("https", "main", listener_secret)},
            ROUTE: {"main": make_route("main", "a")}})

    snap(["cert"]).check_consistent()
    snap(["cert", "client"], cluster_secret="client").check_consistent()
    with pytest.raises(InconsistentSnapshot, match="listener https need.*Secret 'cert', which is missing"):
        snap([]).check_consistent()
    with pytest.raises(InconsistentSnapshot, match="cluster a need.*Secret 'client', which is missing"):
        snap(["cert"], cluster_secret="client").check_consistent()
    with pytest.raises(InconsistentSnapshot, match="Secret 'old' is used by no listener or cluster"):
        snap(["cert", "old"]).check_consistent()
    wrong = Snapshot.build({SECRET: {"x": make_secret("y")}})
    with pytest.raises(InconsistentSnapshot, match="stored as 'x' has name='y'"):
        wrong.check_consistent()


def test_rds_in_default_filter_chain_is_checked():
    listener = make_listener("http", "main")
    listener.default_filter_chain.CopyFrom(make_listener("x", "fallback").filter_chains[0])
    snap = Snapshot.build({
        CLUSTER: {"a": make_cluster("a")}, ENDPOINT: {"a": make_cla("a", [1])},
        LISTENER: {"http": listener}, ROUTE: {"main": make_route("main", "a")}})
    with pytest.raises(InconsistentSnapshot, match="fallback"):
        snap.check_consistent()


_VERSION_SCRIPT = """
from ads_client import make_snapshot
s = make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "b"})
print(s.version, s.type_version("type.googleapis.com/envoy.config.cluster.v3.Cluster"))
"""


def test_versions_are_deterministic():
    s1 = make_snapshot(clusters={"a": [1], "b": [2]}, routes={"main": "b"})
    s2 = make_snapshot(clusters={"b": [2], "a": [1]}, routes={"main": "b"})  # other insertion order
    assert s1.version == s2.version and s1 == s2
    assert len(s1.version) == 12
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        assert s1.type_version(t) == s2.type_version(t) != ""
    assert s1.resource_version(CLUSTER, "a") == s2.resource_version(CLUSTER, "a")
    assert Snapshot.build({}).type_version(CLUSTER) == ""
    s3 = make_snapshot(clusters={"a": [1], "b": [3]}, routes={"main": "b"})
    assert s3.version != s1.version and s3.type_version(CLUSTER) == s1.type_version(CLUSTER)

    tests_dir = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", _VERSION_SCRIPT], capture_output=True, text=True,
                         check=True, timeout=20, cwd=tests_dir).stdout.split()
    assert out == [s1.version, s1.type_version(CLUSTER)]
