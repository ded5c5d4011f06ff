"""A real OTLP/gRPC receiver for the tests: a gRPC server implementing OpenTelemetry's
TraceService and MetricsService (from `opentelemetry-proto`), keeping every export request."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every trace export request; `.metrics` is its OtlpMetricsReceiver, `.port` the port."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._lock = threading.Lock()
        self.metrics = OtlpMetricsReceiver()
        self.port = 0

    def Export(self, request, context):  # noqa: N802 - the gRPC method's name
        with self._lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[dict[str, str], object]]:
        """(resource attributes, span) of every span received so far."""
        with self._lock:
            requests = list(self.requests)
        return [({a.key: a.value.string_value for a in rs.resource.attributes}, span)
                for r in requests for rs in r.resource_spans for ss in rs.scope_spans for span in ss.spans]


class OtlpMetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """Keeps every metrics export request (Envoy's stat sink, meshgate's own pushes)."""

    def __init__(self) -> None:
        self.requests: list = []
        self.port = 0

    def Export(self, request, context):  # noqa: N802 - the gRPC method's name
        self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def metrics(self, service: str | None = None) -> list:
        """Every metric received (of the resource `service.name` = `service`, if given)."""
        return [m for r in list(self.requests) for rm in r.resource_metrics
                if service is None or {a.key: a.value.string_value for a in rm.resource.attributes}.get(
                    "service.name") == service
                for sm in rm.scope_metrics for m in sm.metrics]


@contextlib.contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """Both services on one free loopback port, for a `with` block (a fixture's body)."""
    receiver = OtlpReceiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver.metrics, server)
    receiver.port = receiver.metrics.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver
    finally:
        server.stop(grace=1).wait(5)


def attributes(span) -> dict[str, str]:  # noqa: ANN001
    """A span's (or data point's) attributes as strings."""
    def value(v):  # noqa: ANN001, ANN202
        kind = v.WhichOneof("value")
        return str(getattr(v, kind)) if kind else ""

    return {a.key: value(a.value) for a in span.attributes}
