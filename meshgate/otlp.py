"""OTLP/gRPC export from meshgate's own Python processes (the control plane, the edge companion).

Envoy exports its spans and stats itself (meshgate.xds.translator.tracing, the bootstrap's stat
sink); this module is the Python side, sending to the same collector:

- `SpanQueue`: spans queued by the caller and sent in batches (`TraceService/Export`) once a
  second by a background task. A collector that is down costs one warning, never the caller's
  work: the queue is bounded and drops the oldest spans.
- `MetricsPusher`: the process's Prometheus registry (the one `/metrics` serves), converted to
  OTLP metrics and pushed (`MetricsService/Export`) every `OTEL_METRIC_EXPORT_INTERVAL`
  milliseconds. One set of instruments serves both: a counter is an OTLP cumulative monotonic
  Sum, a gauge a Gauge, a histogram an explicit-bucket Histogram, with the same names and labels
  as on `/metrics`. (This is why meshgate does not use the OpenTelemetry SDK's own instruments:
  every metric would have to be declared twice.)
- `parse_traceparent`: the W3C trace context Envoy puts on its gRPC calls to a companion, so a
  companion's span continues Envoy's trace.

The messages come from `opentelemetry-proto`; both exporters speak plain gRPC to the collector.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

MAX_QUEUED = 4096  # spans waiting for export; beyond, the oldest are dropped
DEFAULT_METRIC_INTERVAL_S = 60.0  # the OpenTelemetry SDK's default for OTEL_METRIC_EXPORT_INTERVAL

# Span kinds of the OTLP protocol (opentelemetry.proto.trace.v1.Span.SpanKind), by name.
INTERNAL, SERVER = 1, 2


def new_ids() -> tuple[bytes, bytes]:
    return os.urandom(16), os.urandom(8)  # W3C/OTLP trace id (16 bytes) and span id (8 bytes)


def parse_traceparent(value: str) -> tuple[bytes, bytes, bool] | None:
    """(trace id, parent span id, sampled) of a W3C `traceparent` header
    (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`); None if it isn't one."""
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = bytes.fromhex(parts[1]), bytes.fromhex(parts[2]), int(parts[3], 16)
    except ValueError:
        return None
    if parts[0] == "ff" or not any(trace_id) or not any(span_id):  # invalid per the W3C spec
        return None
    return trace_id, span_id, bool(flags & 1)


def _attribute(key: str, value: object):  # noqa: ANN202 - a common_pb2.KeyValue
    from opentelemetry.proto.common.v1 import common_pb2

    if isinstance(value, bool):
        any_value = common_pb2.AnyValue(bool_value=value)
    elif isinstance(value, int):
        any_value = common_pb2.AnyValue(int_value=value)
    elif isinstance(value, float):
        any_value = common_pb2.AnyValue(double_value=value)
    else:
        any_value = common_pb2.AnyValue(string_value=str(value))
    return common_pb2.KeyValue(key=key, value=any_value)


def _resource(service_name: str):  # noqa: ANN202 - a resource_pb2.Resource
    from opentelemetry.proto.resource.v1 import resource_pb2

    return resource_pb2.Resource(attributes=[_attribute("service.name", service_name)])


def old_protos() -> bool:
    """True when the installed OTLP protos predate `scope_spans` (xds-protos vendors such a copy)."""
    from opentelemetry.proto.trace.v1 import trace_pb2

    return "scope_spans" not in trace_pb2.ResourceSpans.DESCRIPTOR.fields_by_name


class _Exporter:
    """A background task that calls `_export_once` every `interval` seconds until cancelled
    (then once more), warning once per outage."""

    what = "telemetry"

    def __init__(self, host: str, port: int, service_name: str) -> None:
        self.target = f"{host}:{port}"
        self.service_name = service_name
        self._warned = False
        self.exported = 0

    def _stub(self, channel):  # noqa: ANN001, ANN202
        raise NotImplementedError

    async def _export_once(self, stub) -> bool:  # noqa: ANN001
        """Send what there is; True if something was sent (and the collector took it)."""
        raise NotImplementedError

    async def run(self, interval: float) -> None:
        import grpc

        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = self._stub(channel)
            try:
                while True:
                    await asyncio.sleep(interval)
                    await self._guarded(stub)
            finally:
                await asyncio.shield(self._guarded(stub))

    async def _guarded(self, stub) -> None:  # noqa: ANN001
        try:
            if await self._export_once(stub):
                self._warned = False  # the collector is back: warn again at the next outage
        except Exception as exc:  # noqa: BLE001 - the collector's failure must not stop the process
            if not self._warned:
                log.warning("%s not exported", self.what, extra={"collector": self.target, "error": str(exc)})
                self._warned = True


class SpanQueue(_Exporter):
    """Spans of one service, queued from any thread and exported in batches."""

    what = "spans"

    def __init__(self, host: str, port: int, service_name: str, max_queued: int = MAX_QUEUED) -> None:
        super().__init__(host, port, service_name)
        self._queue: collections.deque = collections.deque(maxlen=max_queued)
        self._lock = threading.Lock()  # the control plane's reloads finish on worker threads

    def add(self, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, object], error: str = "", *,
            trace_id: bytes | None = None, span_id: bytes | None = None, parent_span_id: bytes = b"",
            kind: int = INTERNAL) -> None:
        """Queue one finished span; a new trace unless `trace_id` (and `parent_span_id`) say whose."""
        if trace_id is None:
            trace_id, fresh = new_ids()
            span_id = span_id or fresh
        elif span_id is None:
            span_id = os.urandom(8)
        with self._lock:
            self._queue.append((name, trace_id, span_id, parent_span_id, kind, start_ns, end_ns, dict(attributes),
                                error))

    def _stub(self, channel):  # noqa: ANN001, ANN202
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        return trace_service_pb2_grpc.TraceServiceStub(channel)

    def request(self, spans: Iterable[tuple]):  # noqa: ANN201 - an ExportTraceServiceRequest
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.trace.v1 import trace_pb2

        out = []
        for name, trace_id, span_id, parent, kind, start, end, attributes, error in spans:
            status = trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message=error[:1000]) if error \
                else trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_UNSET)
            out.append(trace_pb2.Span(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name,
                                      kind=kind, start_time_unix_nano=start, end_time_unix_nano=end, status=status,
                                      attributes=[_attribute(k, v) for k, v in attributes.items()]))
        return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
            resource=_resource(self.service_name),
            scope_spans=[trace_pb2.ScopeSpans(scope=common_pb2.InstrumentationScope(name="meshgate"), spans=out)])])

    async def _export_once(self, stub) -> bool:  # noqa: ANN001
        with self._lock:
            spans = list(self._queue)
            self._queue.clear()
        if not spans:
            return False
        await stub.Export(self.request(spans), timeout=5)
        self.exported += len(spans)
        return True

    async def run(self, interval: float = 1.0) -> None:
        await super().run(interval)


def metric_interval(environ: Mapping[str, str]) -> float:
    """Seconds between metric pushes: OTEL_METRIC_EXPORT_INTERVAL (milliseconds, as in the SDK)."""
    from meshgate.environment import env_number

    return env_number(environ, "OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_METRIC_INTERVAL_S * 1000, 100, 86_400_000,
                      "milliseconds, at least 100") / 1000


class MetricsPusher(_Exporter):
    """A Prometheus registry pushed over OTLP (see the module doc for the mapping)."""

    what = "metrics"

    def __init__(self, host: str, port: int, service_name: str, registry: Any) -> None:  # noqa: ANN401
        super().__init__(host, port, service_name)
        self.registry = registry
        self.start_ns = time.time_ns()  # the start of every cumulative series: this process's start

    def _stub(self, channel):  # noqa: ANN001, ANN202
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

        return metrics_service_pb2_grpc.MetricsServiceStub(channel)

    def request(self):  # noqa: ANN201 - an ExportMetricsServiceRequest
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.metrics.v1 import metrics_pb2 as m

        now = time.time_ns()
        start = self.start_ns
        cumulative = m.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        metrics = []
        for family in self.registry.collect():
            kind = family.type
            metric = m.Metric(name=family.name, description=family.documentation, unit=family.unit or "")
            if kind == "counter":
                points = [m.NumberDataPoint(attributes=_labels(s.labels), start_time_unix_nano=start,
                                            time_unix_nano=now, as_double=float(s.value))
                          for s in family.samples if s.name.endswith("_total")]
                metric.sum.CopyFrom(m.Sum(data_points=points, aggregation_temporality=cumulative, is_monotonic=True))
            elif kind == "histogram":
                metric.histogram.CopyFrom(m.Histogram(data_points=list(_histogram_points(family, start, now)),
                                                      aggregation_temporality=cumulative))
            elif kind == "summary":
                metric.summary.CopyFrom(m.Summary(data_points=list(_summary_points(family, start, now))))
            else:  # gauge, info, stateset, unknown: the samples' values as they are
                points = [m.NumberDataPoint(attributes=_labels(s.labels), time_unix_nano=now, as_double=float(s.value))
                          for s in family.samples if not s.name.endswith("_created")]
                metric.gauge.CopyFrom(m.Gauge(data_points=points))
            metrics.append(metric)
        return metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[m.ResourceMetrics(
            resource=_resource(self.service_name),
            scope_metrics=[m.ScopeMetrics(scope=common_pb2.InstrumentationScope(name="meshgate"), metrics=metrics)])])

    async def _export_once(self, stub) -> bool:  # noqa: ANN001
        await stub.Export(self.request(), timeout=5)
        self.exported += 1
        return True


def _labels(labels: Mapping[str, str], skip: str = "") -> list:
    return [_attribute(k, v) for k, v in labels.items() if k != skip]


def _series_key(labels: Mapping[str, str], skip: str) -> tuple:
    return tuple(sorted((k, v) for k, v in labels.items() if k != skip))


def _histogram_points(family, start: int, now: int):  # noqa: ANN001, ANN202
    """Prometheus' cumulative `_bucket{le=...}` samples as OTLP per-bucket counts, one data point
    per label set (explicit bounds: the finite `le`s; the last count is the +Inf bucket's)."""
    from opentelemetry.proto.metrics.v1 import metrics_pb2 as m

    series: dict[tuple, dict[str, Any]] = {}
    for sample in family.samples:
        key = _series_key(sample.labels, "le")
        entry = series.setdefault(key, {"labels": sample.labels, "buckets": [], "count": 0, "sum": 0.0})
        if sample.name.endswith("_bucket"):
            entry["buckets"].append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            entry["count"] = int(sample.value)
        elif sample.name.endswith("_sum"):
            entry["sum"] = float(sample.value)
    for entry in series.values():
        buckets = sorted(entry["buckets"])
        counts, previous = [], 0.0
        for _, cumulative in buckets:
            counts.append(int(cumulative - previous))
            previous = cumulative
        yield m.HistogramDataPoint(attributes=_labels(entry["labels"], skip="le"), start_time_unix_nano=start,
                                   time_unix_nano=now, count=entry["count"], sum=entry["sum"],
                                   explicit_bounds=[le for le, _ in buckets if math.isfinite(le)], bucket_counts=counts)


def _summary_points(family, start: int, now: int):  # noqa: ANN001, ANN202
    from opentelemetry.proto.metrics.v1 import metrics_pb2 as m

    series: dict[tuple, Any] = {}
    for sample in family.samples:
        key = _series_key(sample.labels, "quantile")
        point = series.get(key)
        if point is None:
            point = series[key] = m.SummaryDataPoint(attributes=_labels(sample.labels, skip="quantile"),
                                                     start_time_unix_nano=start, time_unix_nano=now)
        if sample.name.endswith("_count"):
            point.count = int(sample.value)
        elif sample.name.endswith("_sum"):
            point.sum = float(sample.value)
        elif "quantile" in sample.labels:
            point.quantile_values.add(quantile=float(sample.labels["quantile"]), value=float(sample.value))
    yield from series.values()


def start_metrics_push(stack, registry, service_name: str, environ: Mapping[str, str] = os.environ):  # noqa: ANN001, ANN201
    """Push `registry` over OTLP while `stack` (a contextlib.AsyncExitStack) is open, when
    OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT says where (and OTEL_METRICS_EXPORTER isn't `none`);
    flushed once more on close. Returns the pusher, or None when metrics export is off."""
    from meshgate.xds.translator.tracing import otlp_grpc_endpoint

    endpoint = otlp_grpc_endpoint(environ, "METRICS")
    if endpoint is None:
        return None
    pusher = MetricsPusher(endpoint[0], endpoint[1], service_name, registry)
    run_in_background(stack, pusher.run(metric_interval(environ)))
    log.info("metrics pushed over OTLP", extra={"collector": pusher.target, "service": service_name})
    return pusher


def run_in_background(stack, coroutine) -> None:  # noqa: ANN001
    """Run an exporter's loop until `stack` closes; then cancel it (its `finally` flushes once)."""
    task = asyncio.create_task(coroutine)

    async def stop() -> None:
        task.cancel()
        try:
            await asyncio.wait_for(task, timeout=6)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            pass

    stack.push_async_callback(stop)


def service_name(environ: Mapping[str, str], part: str) -> str:
    """`<OTEL_SERVICE_NAME>-<part>` (default `meshgate-<part>`): how meshgate's processes appear
    beside their Envoys (service OTEL_SERVICE_NAME)."""
    return f"{environ.get('OTEL_SERVICE_NAME', '').strip() or 'meshgate'}-{part}"
