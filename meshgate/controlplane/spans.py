"""The control plane's own OpenTelemetry spans, exported over OTLP/gRPC beside Envoy's.

When tracing is on (`OTEL_EXPORTER_OTLP_ENDPOINT`, meshgate.xds.translator.tracing), the control
plane reports, as service `<OTEL_SERVICE_NAME>-control-plane`:

- `meshgate.reload`: one span per config reload (load, validate, translate, publish), with its
  outcome, the snapshot version and the number of problems; status ERROR when nothing could be
  published.
- `meshgate.xds.push`: one span per xDS response, from the moment it is written to the moment
  the Envoy ACKs or NACKs it, so its duration is how long that Envoy took to apply the resources.
  Attributes: node, xDS type, version, resource count; a NACK is status ERROR with Envoy's error.

Spans are queued and sent in batches once a second by a background task; a collector that is
down costs a warning, never a reload (the queue is bounded and drops the oldest spans).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

MAX_QUEUED = 4096  # spans waiting for export; beyond, the oldest are dropped
MAX_PENDING_PUSHES = 4096  # pushes waiting for an ACK (an Envoy that never answers must not grow this)


def _ids() -> tuple[bytes, bytes]:
    return os.urandom(16), os.urandom(8)  # W3C/OTLP trace id (16 bytes) and span id (8 bytes)


class ControlPlaneSpans:
    """Builds spans from the pipeline and the ADS observer, and exports them."""

    def __init__(self, host: str, port: int, service_name: str) -> None:
        self.target = f"{host}:{port}"
        self.service_name = f"{service_name}-control-plane"
        self._queue: collections.deque = collections.deque(maxlen=MAX_QUEUED)
        self._lock = threading.Lock()  # reloads finish on worker threads, pushes on the loop
        # (stream, type, version) -> (start ns, resource count, node id)
        self._pushes: dict[tuple[str, str, str], tuple[int, int, str]] = {}
        self._warned = False
        self.exported = 0

    # -- what is traced -------------------------------------------------------------------------
    def reload(self, start_ns: int, outcome: str, version: str | None, problems: int, error: str = "") -> None:
        attributes = {"meshgate.outcome": outcome, "meshgate.problems": problems}
        if version:
            attributes["meshgate.snapshot_version"] = version
        self._add("meshgate.reload", start_ns, time.time_ns(), attributes, error)

    def push(self, instance: str, node: str, type_url: str, version: str, count: int) -> None:
        """A response was written to the stream `instance` (one Envoy's ADS stream)."""
        with self._lock:
            if len(self._pushes) >= MAX_PENDING_PUSHES:
                self._pushes.pop(next(iter(self._pushes)))
            self._pushes[(instance, type_url, version)] = (time.time_ns(), count, node)

    def answered(self, instance: str, type_url: str, version: str, error: str = "") -> None:
        """The Envoy ACKed (error "") or NACKed the response of `version`."""
        with self._lock:
            started = self._pushes.pop((instance, type_url, version), None)
        if started is None:
            return  # an ACK of a response sent before tracing knew of it (or already answered)
        start_ns, count, node = started
        attributes = {"meshgate.node": node, "meshgate.xds_type": type_url.rsplit(".", 1)[-1],
                      "meshgate.version": version, "meshgate.resources": count,
                      "meshgate.result": "NACK" if error else "ACK"}
        self._add("meshgate.xds.push", start_ns, time.time_ns(), attributes, error)

    def _add(self, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, object], error: str) -> None:
        trace_id, span_id = _ids()
        with self._lock:
            self._queue.append((name, trace_id, span_id, start_ns, end_ns, dict(attributes), error))

    # -- export ---------------------------------------------------------------------------------
    def _request(self, spans: list[tuple]):
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2
        from opentelemetry.proto.trace.v1 import trace_pb2

        def attr(key: str, value: object) -> common_pb2.KeyValue:
            any_value = (common_pb2.AnyValue(int_value=value) if isinstance(value, int)
                         else common_pb2.AnyValue(string_value=str(value)))
            return common_pb2.KeyValue(key=key, value=any_value)

        out = []
        for name, trace_id, span_id, start, end, attributes, error in spans:
            status = trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message=error[:1000]) if error \
                else trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_UNSET)
            out.append(trace_pb2.Span(trace_id=trace_id, span_id=span_id, name=name,
                                      kind=trace_pb2.Span.SPAN_KIND_INTERNAL, start_time_unix_nano=start,
                                      end_time_unix_nano=end, status=status,
                                      attributes=[attr(k, v) for k, v in attributes.items()]))
        return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
            resource=resource_pb2.Resource(attributes=[attr("service.name", self.service_name)]),
            scope_spans=[trace_pb2.ScopeSpans(scope=common_pb2.InstrumentationScope(name="meshgate"), spans=out)])])

    async def run(self, interval: float = 1.0) -> None:
        """Export queued spans every `interval` seconds until cancelled (then once more)."""
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            try:
                while True:
                    await asyncio.sleep(interval)
                    await self._export(stub)
            finally:
                await asyncio.shield(self._export(stub))

    async def _export(self, stub) -> None:  # noqa: ANN001
        with self._lock:
            spans = list(self._queue)
            self._queue.clear()
        if not spans:
            return
        try:
            await stub.Export(self._request(spans), timeout=5)
            self.exported += len(spans)
            self._warned = False
        except Exception as exc:  # noqa: BLE001 - the collector's failure must not stop the control plane
            if not self._warned:
                log.warning("control-plane spans not exported", extra={"collector": self.target, "error": str(exc)})
                self._warned = True


def old_protos() -> bool:
    """True when the installed OTLP protos predate `scope_spans` (xds-protos vendors such a copy)."""
    from opentelemetry.proto.trace.v1 import trace_pb2

    return "scope_spans" not in trace_pb2.ResourceSpans.DESCRIPTOR.fields_by_name


def start_spans(tracing, status, plane) -> ControlPlaneSpans | None:  # noqa: ANN001
    """Control-plane spans when tracing is on (TracingOptions), hooked into the pipeline and the
    ADS observer; None when it is off or the OTLP protos are too old to export them."""
    if tracing is None:
        return None
    if old_protos():
        log.warning("control-plane spans off: the installed OpenTelemetry protos predate scope_spans "
                    "(reinstall opentelemetry-proto after xds-protos)")
        return None
    spans = ControlPlaneSpans(tracing.host, tracing.port, tracing.service_name)
    status.spans = plane.spans = spans
    return spans


async def run_until_closed(stack, spans: ControlPlaneSpans | None) -> None:  # noqa: ANN001
    """Export in the background until `stack` (a contextlib.AsyncExitStack) closes; then flush."""
    if spans is None:
        return
    task = asyncio.create_task(spans.run())

    async def stop() -> None:
        task.cancel()
        try:
            await asyncio.wait_for(task, timeout=6)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            pass

    stack.push_async_callback(stop)
