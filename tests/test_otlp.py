"""meshgate.otlp: the Python processes' Prometheus metrics as OTLP metrics (pushed to a real
OTLP/gRPC receiver), W3C traceparent parsing, and the export interval's validation."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

from harness import wait_until
from meshgate.errors import StartupError
from meshgate.otlp import MetricsPusher, metric_interval, parse_traceparent, start_metrics_push
from otlp_receiver import OtlpMetricsReceiver, otlp_receiver


@pytest.fixture()
def receiver():
    with otlp_receiver() as otlp:
        yield otlp.metrics


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    requests = Counter("app_requests", "Requests by result", ["result"], registry=registry)
    requests.labels("ok").inc(3)
    requests.labels("error").inc()
    Gauge("app_queue_depth", "Items queued", registry=registry).set(7)
    latency = Histogram("app_latency_seconds", "Latency", buckets=(0.1, 1.0), registry=registry)
    for value in (0.05, 0.5, 0.7, 5.0):
        latency.observe(value)
    Summary("app_size_bytes", "Sizes", registry=registry).observe(42)
    return registry


def _by_name(request) -> dict:  # noqa: ANN001
    [resource_metrics] = request.resource_metrics
    [scope] = resource_metrics.scope_metrics
    return {m.name: m for m in scope.metrics}


def test_prometheus_kinds_map_to_otlp_kinds() -> None:
    request = MetricsPusher("127.0.0.1", 1, "svc-edge", _registry()).request()
    resource = {a.key: a.value.string_value for a in request.resource_metrics[0].resource.attributes}
    assert resource == {"service.name": "svc-edge"}
    metrics = _by_name(request)

    counter = metrics["app_requests"]  # Prometheus names it app_requests_total; OTLP has no suffix
    assert counter.sum.is_monotonic and counter.sum.aggregation_temporality == 2  # CUMULATIVE
    values = {p.attributes[0].value.string_value: p.as_double for p in counter.sum.data_points}
    assert values == {"ok": 3.0, "error": 1.0}
    assert all(p.start_time_unix_nano < p.time_unix_nano for p in counter.sum.data_points)

    [gauge] = metrics["app_queue_depth"].gauge.data_points
    assert gauge.as_double == 7.0

    [histogram] = metrics["app_latency_seconds"].histogram.data_points
    assert list(histogram.explicit_bounds) == [0.1, 1.0]
    assert list(histogram.bucket_counts) == [1, 2, 1]  # per bucket, not cumulative; the last is +Inf's
    assert histogram.count == 4 and histogram.sum == pytest.approx(6.25)
    assert not histogram.attributes  # no `le` left as an attribute

    [summary] = metrics["app_size_bytes"].summary.data_points
    assert summary.count == 1 and summary.sum == 42.0


async def test_pushed_to_a_real_receiver_and_flushed_on_close(receiver: OtlpMetricsReceiver) -> None:
    registry = _registry()
    env = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
           "OTEL_METRIC_EXPORT_INTERVAL": "100"}
    async with contextlib.AsyncExitStack() as stack:
        pusher = start_metrics_push(stack, registry, "svc-control-plane", env)
        await asyncio.to_thread(wait_until, lambda: receiver.requests, 5, 0.05, "a metrics push")
        Counter("app_late", "Made after the first push", registry=registry).inc()
    assert pusher.exported >= 2  # the last push happened when the stack closed
    assert "app_late" in {m.name for m in receiver.metrics("svc-control-plane")}


def test_metrics_export_is_off_without_an_endpoint_or_with_exporter_none() -> None:
    async def start(env):  # noqa: ANN001, ANN202
        async with contextlib.AsyncExitStack() as stack:
            return start_metrics_push(stack, CollectorRegistry(), "svc", env)

    assert asyncio.run(start({})) is None
    assert asyncio.run(start({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
                              "OTEL_METRICS_EXPORTER": "none"})) is None


@pytest.mark.parametrize("value", ["abc", "0", "50", "-1", "nan"])
def test_a_bad_export_interval_is_a_clear_error(value: str) -> None:
    with pytest.raises(StartupError, match=f"OTEL_METRIC_EXPORT_INTERVAL={value}: expected milliseconds"):
        metric_interval({"OTEL_METRIC_EXPORT_INTERVAL": value})
    assert metric_interval({}) == 60.0 and metric_interval({"OTEL_METRIC_EXPORT_INTERVAL": "2500"}) == 2.5


def test_traceparent() -> None:
    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert parse_traceparent(f"00-{trace}-{span}-01") == (bytes.fromhex(trace), bytes.fromhex(span), True)
    assert parse_traceparent(f"00-{trace}-{span}-00")[2] is False  # not sampled
    for bad in ("", "garbage", f"00-{trace}-{span}", f"00-{'0' * 32}-{span}-01", f"00-{trace}-{'0' * 16}-01",
                f"ff-{trace}-{span}-01", f"00-{trace[:-1]}x-{span}-01"):
        assert parse_traceparent(bad) is None, bad
