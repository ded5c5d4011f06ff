"""The edge companion continues Envoy's traces.

When Envoy traces a request (OpenTelemetry tracer, meshgate.xds.translator.tracing), its gRPC
calls to the companion (ext_authz `Check`, `ShouldRateLimit`) carry the W3C `traceparent` of
Envoy's own span for that call in their metadata. The companion then reports one span per
sampled call, a child of Envoy's, as service `<OTEL_SERVICE_NAME>-edge`, and puts the trace id
in its log lines beside Envoy's `x-request-id`: a refusal in the companion's log leads to the
trace, and the trace to the log line.

Off (no per-call work beyond one `is None` test) unless OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is
set for the companion, as for the control plane; a refusal's log line reads the trace id either
way, since refusals are rare and worth correlating.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import grpc

from meshgate.otlp import SERVER, SpanQueue, parse_traceparent

TraceContext = tuple[bytes, bytes, bool]  # (trace id, Envoy's span id, sampled)


def trace_of(context: grpc.aio.ServicerContext) -> TraceContext | None:
    """The W3C trace context Envoy sent with this call, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            return parse_traceparent(value if isinstance(value, str) else value.decode("latin-1"))
    return None


def log_ids(trace: TraceContext | None) -> dict[str, str]:
    """The `trace_id` field of a log line (as Envoy's access log writes it: 32 hex digits)."""
    return {"trace_id": trace[0].hex()} if trace is not None else {}


def record(spans: SpanQueue | None, trace: TraceContext | None, name: str, elapsed_s: float,
           attributes: Mapping[str, object]) -> None:
    """Queue the span of one call that took `elapsed_s`, if tracing is on and Envoy sampled it."""
    if spans is None or trace is None or not trace[2]:
        return
    end = time.time_ns()
    spans.add(name, end - int(elapsed_s * 1e9), end, attributes, trace_id=trace[0], parent_span_id=trace[1],
              kind=SERVER)


def start_tracing(stack, environ: Mapping[str, str]) -> SpanQueue | None:  # noqa: ANN001
    """The companion's span exporter while `stack` is open, when tracing is configured."""
    from meshgate.otlp import old_protos, run_in_background, service_name
    from meshgate.xds.translator.tracing import otlp_grpc_endpoint

    endpoint = otlp_grpc_endpoint(environ, "TRACES")
    if endpoint is None or old_protos():
        return None
    spans = SpanQueue(endpoint[0], endpoint[1], service_name(environ, "edge"))
    run_in_background(stack, spans.run())
    return spans
