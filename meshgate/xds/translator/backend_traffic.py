"""BackendTrafficPolicy settings in Envoy's terms: retries and timeouts on the route, circuit
breakers, health checks, outlier detection and load balancing on the cluster. All enforced by
Envoy itself; nothing here runs per request.

Envoy docs: retries https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/http_routing#retry-semantics ,
circuit breaking https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/circuit_breaking ,
health checking https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/health_checking ,
outlier detection https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import http_pb2, percent_pb2, range_pb2
from google.protobuf import duration_pb2

from meshgate import ir

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


# --- route -----------------------------------------------------------------------------------


def set_route_traffic(out: rc.RouteAction, route: ir.Route) -> None:
    """Retries, and the gRPC deadline cap, of one route."""
    if route.grpc and route.timeout_s:
        # The client's grpc-timeout is honoured up to the route timeout; Envoy then sends the
        # deadline left to the upstream in grpc-timeout (and x-envoy-expected-rq-timeout-ms).
        out.max_stream_duration.grpc_timeout_header_max.CopyFrom(_duration(route.timeout_s))
    if route.max_stream_duration_s is not None:
        # Envoy resets the stream this long after it began. Unlike the cluster's
        # max_connection_duration (which drains: an upstream connection holding an upgraded
        # stream stays until the stream ends), this ends a WebSocket.
        out.max_stream_duration.max_stream_duration.CopyFrom(_duration(route.max_stream_duration_s))
    retry = route.retry
    if retry is None:
        return
    policy = out.retry_policy  # per_try_timeout may already be set from the rule's timeouts
    policy.retry_on = ",".join(retry.triggers)
    policy.num_retries.value = retry.num_retries
    policy.retriable_status_codes.extend(retry.status_codes)
    if retry.backoff_base_s is not None or retry.backoff_max_s is not None:
        # Envoy waits a random time in [0, base * 2^attempt), capped at max (full jitter).
        base = retry.backoff_base_s if retry.backoff_base_s is not None else min(0.025, retry.backoff_max_s)
        policy.retry_back_off.base_interval.CopyFrom(_duration(base))
        if retry.backoff_max_s is not None:
            policy.retry_back_off.max_interval.CopyFrom(_duration(retry.backoff_max_s))
    if retry.methods:
        # Envoy retries a request only if it has a header matching one of these: here its
        # method, so that non-idempotent requests (POST...) are never sent twice by default.
        policy.retriable_request_headers.add(
            name=":method",
            string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex="|".join(retry.methods))))


# --- cluster ---------------------------------------------------------------------------------

_LB_WITH_SLOW_START = {"RoundRobin": "round_robin_lb_config", "LeastRequest": "least_request_lb_config"}
_METHODS = {m: base_pb2.RequestMethod.Value(m) for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH")}


def set_cluster_settings(out: cluster_pb2.Cluster, cluster: ir.Cluster) -> None:
    s = cluster.settings
    if s is None:
        return
    if s.circuit_breakers is not None:
        _set_circuit_breakers(out, s.circuit_breakers)
    if s.health_check is not None:
        out.health_checks.append(_health_check(s.health_check, cluster.protocol))
    if s.outlier is not None:
        out.outlier_detection.CopyFrom(_outlier_detection(s.outlier))
    if s.panic_threshold_percent is not None:
        # Below this share of healthy endpoints Envoy balances over all of them ("panic mode"),
        # rather than pile every request on the few left.
        out.common_lb_config.healthy_panic_threshold.value = s.panic_threshold_percent
    if s.slow_start_window_s is not None and cluster.lb in _LB_WITH_SLOW_START:
        # A new (or newly healthy) endpoint's weight ramps up linearly over the window.
        lb_config = getattr(out, _LB_WITH_SLOW_START[cluster.lb])
        lb_config.slow_start_config.slow_start_window.CopyFrom(_duration(s.slow_start_window_s))
    if s.idle_timeout_s is not None or s.max_connection_duration_s is not None or s.max_requests_per_connection:
        _set_connection_options(out, cluster, s)


def _set_circuit_breakers(out: cluster_pb2.Cluster, cb: ir.CircuitBreakers) -> None:
    # Over any of these, Envoy fails the request at once with 503 (x-envoy-overloaded, response
    # flag UO) instead of queueing it: the pending queue is max_pending_requests deep.
    t = out.circuit_breakers.thresholds.add(priority=base_pb2.DEFAULT)
    t.max_connections.value = cb.max_connections
    t.max_pending_requests.value = cb.max_pending_requests
    t.max_requests.value = cb.max_requests
    t.max_retries.value = cb.max_retries
    if cb.retry_budget_percent is not None:
        # Retries in flight limited to a share of active requests (replaces max_retries).
        budget = circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
            budget_percent=percent_pb2.Percent(value=cb.retry_budget_percent))
        budget.min_retry_concurrency.value = cb.retry_budget_min_concurrency or 0
        t.retry_budget.CopyFrom(budget)
    t.track_remaining = True  # remaining-capacity gauges in Envoy's stats


def _health_check(hc: ir.ActiveHealthCheck, protocol: str) -> health_check_pb2.HealthCheck:
    out = health_check_pb2.HealthCheck(timeout=_duration(hc.timeout_s), interval=_duration(hc.interval_s))
    out.healthy_threshold.value = hc.healthy_threshold
    out.unhealthy_threshold.value = hc.unhealthy_threshold
    # Envoy checks a cluster that has had no traffic yet only every no_traffic_interval (60 s by
    # default), so a fresh cluster's first verdict would take a minute: use the interval.
    out.no_traffic_interval.CopyFrom(_duration(hc.interval_s))
    if hc.kind == "HTTP":
        http = out.http_health_check
        http.path = hc.http_path or "/"
        if hc.http_host:
            http.host = hc.http_host
        if hc.http_method:
            http.method = _METHODS[hc.http_method]
        for code in hc.expected_statuses:
            http.expected_statuses.append(range_pb2.Int64Range(start=code, end=code + 1))  # end exclusive
        if protocol in ("HTTP2", "GRPC"):
            http.codec_client_type = http_pb2.HTTP2
    elif hc.kind == "GRPC":
        out.grpc_health_check.SetInParent()  # grpc.health.v1.Health/Check over HTTP/2
        if hc.grpc_service:
            out.grpc_health_check.service_name = hc.grpc_service
    else:
        out.tcp_health_check.SetInParent()  # healthy when a connection opens
    return out


def _outlier_detection(o: ir.OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    out = outlier_detection_pb2.OutlierDetection(
        interval=_duration(o.interval_s), base_ejection_time=_duration(o.base_ejection_time_s),
        split_external_local_origin_errors=o.split_external_local_origin_errors)
    out.max_ejection_percent.value = o.max_ejection_percent
    out.consecutive_5xx.value = o.consecutive_5xx
    # 0 means "off" to the user; Envoy would eject on the first error, so enforcement goes to 0.
    out.enforcing_consecutive_5xx.value = 100 if o.consecutive_5xx else 0
    if o.consecutive_gateway_errors:
        out.consecutive_gateway_failure.value = o.consecutive_gateway_errors
        out.enforcing_consecutive_gateway_failure.value = 100  # Envoy's default is 0 (counted, not enforced)
    else:
        out.enforcing_consecutive_gateway_failure.value = 0
    if o.split_external_local_origin_errors:
        out.consecutive_local_origin_failure.value = o.consecutive_local_origin_failures
    return out


def _set_connection_options(out: cluster_pb2.Cluster, cluster: ir.Cluster, s: ir.ClusterSettings) -> None:
    """Upstream connection lifetime, in the cluster's HttpProtocolOptions (kept as built so far)."""
    options = http_protocol_options_pb2.HttpProtocolOptions()
    if HTTP_PROTOCOL_OPTIONS in out.typed_extension_protocol_options:
        out.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()  # HTTP/1.1, as without options
    common = options.common_http_protocol_options
    if s.idle_timeout_s is not None:
        common.idle_timeout.CopyFrom(_duration(s.idle_timeout_s))
    if s.max_connection_duration_s is not None:
        common.max_connection_duration.CopyFrom(_duration(s.max_connection_duration_s))
    if s.max_requests_per_connection:
        common.max_requests_per_connection.value = s.max_requests_per_connection
    out.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(options, deterministic=True)
