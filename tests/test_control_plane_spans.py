"""The control plane's spans (meshgate.controlplane.spans) against a real OTLP/gRPC receiver: a
NACKed push is an ERROR span carrying Envoy's error, an unanswered push waits (bounded), and a
collector that is down costs one warning and no exception."""

from __future__ import annotations

import asyncio
import logging

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from harness import free_port, wait_until
from meshgate.controlplane import spans as spans_module
from meshgate.controlplane.spans import ControlPlaneSpans
from otlp_receiver import OtlpReceiver, otlp_receiver
from otlp_receiver import attributes as _attributes

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


@pytest.fixture()
def otlp():
    with otlp_receiver() as receiver:
        yield receiver


async def test_a_nack_is_an_error_span_with_envoys_reason(otlp: OtlpReceiver) -> None:
    spans = ControlPlaneSpans("127.0.0.1", otlp.port, "mg")
    runner = asyncio.create_task(spans.run(interval=0.05))
    try:
        spans.push("stream-1", "edge-1", LDS, "v2", 3)
        spans.push("stream-1", "edge-1", LDS, "v3", 3)  # not answered yet: no span
        spans.answered("stream-1", LDS, "v2", error="Error adding listener 'x': address already in use")
        spans.answered("stream-1", LDS, "v9")  # an ACK of nothing we pushed: no span
        spans.reload(0, "rejected", None, 1, error="internal error")
        await asyncio.to_thread(wait_until, lambda: len(otlp.spans()) >= 2, 5, 0.05, "two spans")
        await asyncio.sleep(0.2)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    by_name = {span.name: (resource, span) for resource, span in otlp.spans()}
    assert sorted(by_name) == ["meshgate.reload", "meshgate.xds.push"]
    resource, push = by_name["meshgate.xds.push"]
    assert resource["service.name"] == "mg-control-plane"
    assert push.status.code == trace_pb2.Status.STATUS_CODE_ERROR and "address already in use" in push.status.message
    assert _attributes(push) == {"meshgate.node": "edge-1", "meshgate.xds_type": "Listener", "meshgate.version": "v2",
                                 "meshgate.resources": "3", "meshgate.result": "NACK"}
    assert by_name["meshgate.reload"][1].status.code == trace_pb2.Status.STATUS_CODE_ERROR


def test_unanswered_pushes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spans_module, "MAX_PENDING_PUSHES", 10)
    spans = ControlPlaneSpans("127.0.0.1", 1, "mg")
    for i in range(25):
        spans.push("stream-1", "edge-1", LDS, f"v{i}", 1)
    assert len(spans._pushes) == 10


async def test_a_collector_that_is_down_costs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    spans = ControlPlaneSpans("127.0.0.1", free_port(), "mg")  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="meshgate.otlp"):
        runner = asyncio.create_task(spans.run(interval=0.05))
        for _ in range(3):
            spans.reload(0, "accepted", "v1", 0)
            await asyncio.sleep(0.3)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    warnings = [r for r in caplog.records if "not exported" in r.getMessage()]
    assert len(warnings) == 1 and spans.exported == 0


async def test_pushes_are_children_of_the_reload_that_produced_their_config(otlp: OtlpReceiver) -> None:
    spans = ControlPlaneSpans("127.0.0.1", otlp.port, "mg")
    runner = asyncio.create_task(spans.run(interval=0.05))
    try:
        spans.reload(0, "accepted", "snap-1", 0)
        spans.push("stream-1", "edge-1", LDS, "v1", 1)
        spans.answered("stream-1", LDS, "v1")
        spans.reload(0, "accepted", "snap-1", 0)  # nothing changed: later pushes stay with snap-1's reload
        spans.push("stream-2", "edge-2", LDS, "v1", 1)  # an Envoy connecting later gets snap-1 too
        spans.answered("stream-2", LDS, "v1")
        await asyncio.to_thread(wait_until, lambda: len(otlp.spans()) >= 4, 5, 0.05, "four spans")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    reloads = [s for _, s in otlp.spans() if s.name == "meshgate.reload"]
    pushes = [s for _, s in otlp.spans() if s.name == "meshgate.xds.push"]
    assert len(pushes) == 2 and len(reloads) == 2
    for push in pushes:
        assert push.trace_id == reloads[0].trace_id and push.parent_span_id == reloads[0].span_id
    assert reloads[1].trace_id != reloads[0].trace_id  # each reload is a trace of its own
