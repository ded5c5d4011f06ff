"""The control plane's own OpenTelemetry spans, exported over OTLP/gRPC beside Envoy's.

When tracing is on (`OTEL_EXPORTER_OTLP_ENDPOINT`, meshgate.xds.translator.tracing), the control
plane reports, as service `<OTEL_SERVICE_NAME>-control-plane`:

- `meshgate.reload`: one span per config reload (load, validate, translate, publish), with its
  outcome, the snapshot version and the number of problems; status ERROR when nothing could be
  published.
- `meshgate.xds.push`: one span per xDS response, from the moment it is written to the moment
  the Envoy ACKs or NACKs it, so its duration is how long that Envoy took to apply the resources.
  Attributes: node, xDS type, version, resource count; a NACK is status ERROR with Envoy's error.
  Each push span is a child of the reload span that produced the config it carries, so one
  trace shows a change from the reload to every Envoy's ACK.

Spans are queued and sent in batches once a second by a background task; a collector that is
down costs a warning, never a reload (the queue is bounded and drops the oldest spans).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from meshgate.otlp import SpanQueue, new_ids, old_protos, run_in_background

MAX_PENDING_PUSHES = 4096  # pushes waiting for an ACK (an Envoy that never answers must not grow this)


class ControlPlaneSpans:
    """Builds spans from the pipeline and the ADS observer, and exports them (meshgate.otlp)."""

    def __init__(self, host: str, port: int, service_name: str) -> None:
        self.queue = SpanQueue(host, port, f"{service_name}-control-plane")
        self.target = self.queue.target
        self.service_name = self.queue.service_name
        self._lock = threading.Lock()  # reloads finish on worker threads, pushes on the loop
        # (stream, type, version) -> (start ns, resource count, node id, (trace id, parent span id))
        self._pushes: dict[tuple[str, str, str], tuple[int, int, str, tuple[bytes, bytes]]] = {}
        # The trace of the reload that produced the config being pushed: a push span is a child of
        # that reload's span, so one trace shows a config change from the file write to each ACK.
        self._reload_trace: tuple[bytes, bytes] | None = None
        self._reload_version: str | None = None

    @property
    def exported(self) -> int:
        return self.queue.exported

    # -- what is traced -------------------------------------------------------------------------
    def reload(self, start_ns: int, outcome: str, version: str | None, problems: int, error: str = "") -> None:
        attributes = {"meshgate.outcome": outcome, "meshgate.problems": problems}
        trace_id, span_id = new_ids()
        if version:
            attributes["meshgate.snapshot_version"] = version
            with self._lock:
                if version != self._reload_version:  # a reload that changed nothing pushes nothing
                    self._reload_trace, self._reload_version = (trace_id, span_id), version
        self.queue.add("meshgate.reload", start_ns, time.time_ns(), attributes, error, trace_id=trace_id,
                       span_id=span_id)

    def push(self, instance: str, node: str, type_url: str, version: str, count: int) -> None:
        """A response was written to the stream `instance` (one Envoy's ADS stream)."""
        with self._lock:
            if len(self._pushes) >= MAX_PENDING_PUSHES:
                self._pushes.pop(next(iter(self._pushes)))
            # Whatever a stream is sent is the latest snapshot, the last changing reload's work
            # (also for an Envoy that connects later: it receives what that reload produced).
            parent = self._reload_trace or (new_ids()[0], b"")  # no reload traced yet: a trace of its own
            self._pushes[(instance, type_url, version)] = (time.time_ns(), count, node, parent)

    def answered(self, instance: str, type_url: str, version: str, error: str = "") -> None:
        """The Envoy ACKed (error "") or NACKed the response of `version`."""
        with self._lock:
            started = self._pushes.pop((instance, type_url, version), None)
        if started is None:
            return  # an ACK of a response sent before tracing knew of it (or already answered)
        start_ns, count, node, (trace_id, parent) = started
        attributes = {"meshgate.node": node, "meshgate.xds_type": type_url.rsplit(".", 1)[-1],
                      "meshgate.version": version, "meshgate.resources": count,
                      "meshgate.result": "NACK" if error else "ACK"}
        self.queue.add("meshgate.xds.push", start_ns, time.time_ns(), attributes, error, trace_id=trace_id,
                       parent_span_id=parent)

    async def run(self, interval: float = 1.0) -> None:
        """Export queued spans every `interval` seconds until cancelled (then once more)."""
        await self.queue.run(interval)


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
    if spans is not None:
        run_in_background(stack, spans.run())
