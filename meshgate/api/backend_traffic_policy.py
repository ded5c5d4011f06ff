"""BackendTrafficPolicy: how Envoy talks to the backends of a Gateway, route or rule (Envoy
Gateway's `BackendTrafficPolicy`, resilience part): timeouts, retries, circuit breakers, active
and passive health checks, load balancing.

Shapes only; attachment and merging are `meshgate.gatewayapi.backend_policy`, Envoy config
`meshgate.xds.translator.backend_traffic`; the shaping fields (rate limits, compression, fault injection) are in
`meshgate.api.backend_traffic_shaping`. Fields of Envoy Gateway's kind that meshgate does not
implement are listed in `UNSUPPORTED` and rejected with an error naming them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from meshgate.api.models import Duration, HeaderName, Model, Resource, duration_seconds
from meshgate.api.backend_traffic_shaping import (
    AdaptiveConcurrency,
    Compression,
    FaultInjection,
    RateLimitSpec,
    ResponseOverride,
    check_compression,
)
from meshgate.api.backend_traffic_extras import BandwidthLimit, Cache
from meshgate.api.policies import GATEWAY_GROUP, PolicyTargetReference, _reject_unsupported

# Envoy Gateway BackendTrafficPolicy fields meshgate does not implement yet (field -> hint).
# Delete a line here when the field is implemented.
UNSUPPORTED: dict[str, str] = {
    "targetRef": "use targetRefs (a list)",
    "targetSelectors": "name targets with targetRefs",
    "compressor": "use compression (a list, one item per algorithm)",
    "proxyProtocol": "",
    "tcpKeepalive": "",
    "connection": "",
    "dns": "",
    "http2": "",
    "useClientProtocol": "",
    "httpUpgrade": "",
    "requestBuffer": "",
    "telemetry": "",
    "routingType": "",
    "mergeType": "policies always merge field by field (see docs/policies.md)",
}

# RFC 9110 idempotent methods: what retries are limited to unless `retry.methods` says otherwise.
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")


def _positive(value: str | None, what: str = "duration") -> str | None:
    if value is not None and duration_seconds(value) <= 0:
        raise ValueError(f"the {what} must be more than 0")
    return value


# -- timeout ----------------------------------------------------------------------------------


class BackendTCPTimeout(Model):
    connect_timeout: Duration | None = Field(
        None, description="Time to establish a connection to an endpoint (TCP and TLS handshakes). "
        "Default: the Backend's connectTimeout (5s).")

    _positive = field_validator("connect_timeout")(classmethod(lambda cls, v: _positive(v, "connect timeout")))


class BackendHTTPTimeout(Model):
    request_timeout: Duration | None = Field(
        None, description="Time for the whole exchange with the backend, retries included, until the response "
        "is complete; Envoy answers 504 after it. 0s: no limit. Default 15s. A rule's own `timeouts.request` "
        "wins over this. On a GRPCRoute it also caps the client's `grpc-timeout`.")
    connection_idle_timeout: Duration | None = Field(
        None, description="Close an upstream connection with no active request after this long. Default 1h.")
    max_connection_duration: Duration | None = Field(
        None, description="Close an upstream connection this long after it was opened (drained first: a request "
        "in flight, or an open WebSocket, keeps it until it ends; see maxStreamDuration). Default: no limit.")
    max_stream_duration: Duration | None = Field(
        None, description="meshgate extension. Reset any stream of the route this long after it began, whatever "
        "else it is doing: an open WebSocket is closed, an HTTP request still running gets 504 (or is cut off "
        "if its response had begun). Envoy's route `max_stream_duration`. Default: no limit.")

    _positive = field_validator("max_stream_duration")(classmethod(lambda cls, v: _positive(v, "stream duration")))


class BackendTimeout(Model):
    tcp: BackendTCPTimeout | None = None
    http: BackendHTTPTimeout | None = None


# -- retry ------------------------------------------------------------------------------------

RetryTrigger = Literal["5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
                       "retriable-status-codes", "cancelled", "deadline-exceeded", "internal",
                       "resource-exhausted", "unavailable"]


class RetryOn(Model):
    triggers: list[RetryTrigger] | None = Field(
        None, max_length=12, description="What makes Envoy retry (HTTP: 5xx, gateway-error, reset, connect-failure, "
        "retriable-4xx, refused-stream, retriable-status-codes; gRPC status in the response: cancelled, "
        "deadline-exceeded, internal, resource-exhausted, unavailable).")
    http_status_codes: list[int] | None = Field(
        None, max_length=32, description="Statuses retried with the retriable-status-codes trigger.")

    @field_validator("http_status_codes")
    @classmethod
    def _codes(cls, codes: list[int] | None) -> list[int] | None:
        for code in codes or ():
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status (100-599)")
        return codes

    @model_validator(mode="after")
    def _codes_need_trigger(self) -> RetryOn:
        if self.http_status_codes and "retriable-status-codes" not in (self.triggers or ()):
            raise ValueError("httpStatusCodes needs the retriable-status-codes trigger in triggers")
        return self


class BackOffPolicy(Model):
    base_interval: Duration | None = Field(
        None, description="First wait between attempts (Envoy adds full jitter, and doubles it after each "
        "attempt). Default 25ms.")
    max_interval: Duration | None = Field(None, description="Longest wait between attempts. Default 10 × baseInterval.")

    _positive = field_validator("base_interval", "max_interval")(classmethod(lambda cls, v: _positive(v, "interval")))

    @model_validator(mode="after")
    def _order(self) -> BackOffPolicy:
        if self.base_interval and self.max_interval and \
                duration_seconds(self.max_interval) < duration_seconds(self.base_interval):
            raise ValueError("maxInterval must be at least baseInterval")
        return self


class PerRetryPolicy(Model):
    timeout: Duration | None = Field(
        None, description="Time limit of each attempt; one that takes longer is cut off and retried (if "
        "attempts are left). A rule's own `timeouts.backendRequest` wins over this.")
    back_off: BackOffPolicy | None = None

    _positive = field_validator("timeout")(classmethod(lambda cls, v: _positive(v, "per-retry timeout")))


class Retry(Model):
    num_retries: int | None = Field(None, ge=0, le=100, description="Retries after the first attempt. Default 2.")
    retry_on: RetryOn | None = Field(
        None, description="Default: connect-failure, refused-stream, unavailable, cancelled, and "
        "retriable-status-codes with 503 (Envoy Gateway's default).")
    per_retry: PerRetryPolicy | None = None
    methods: list[Literal["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST", "PATCH", "CONNECT"]] | None = Field(
        None, max_length=9, description="meshgate extension. HTTP methods whose requests may be retried. Default: "
        "the idempotent ones (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), so a POST is never sent twice unless "
        "listed here. Not applied on GRPCRoutes (every gRPC call is a POST; their triggers are gRPC statuses).")


# -- circuit breaker --------------------------------------------------------------------------

_U32 = 4_294_967_295


class RetryBudget(Model):
    percent: float = Field(20.0, gt=0, le=100, description="Active retries allowed, as a percentage of active "
                           "requests (plus pending ones). Default 20.")
    min_retry_concurrency: int = Field(3, ge=0, le=_U32, description="Retries always allowed, whatever the "
                                       "percentage. Default 3.")


class CircuitBreaker(Model):
    max_connections: int | None = Field(None, ge=1, le=_U32, description="Connections to the backend's endpoints, "
                                        "all together. Default 1024.")
    max_pending_requests: int | None = Field(
        None, ge=0, le=_U32, description="Requests waiting for a connection (the queue in front of the backend). "
        "Default 1024. At least 1: an HTTP/1.1 request waiting for a new connection counts as pending.")
    max_parallel_requests: int | None = Field(None, ge=1, le=_U32, description="Requests in flight to the backend. "
                                              "Default 1024.")
    max_parallel_retries: int | None = Field(None, ge=0, le=_U32, description="Retries in flight to the backend. "
                                             "Default 1024.")
    max_requests_per_connection: int | None = Field(None, ge=1, le=_U32, description="Requests sent over one "
                                                    "upstream connection before it is closed. Default: no limit.")
    retry_budget: RetryBudget | None = Field(
        None, description="meshgate extension. Limit retries to a share of the active requests instead of a "
        "fixed number (Envoy's retry budget); when set, maxParallelRetries no longer applies.")

    @field_validator("max_pending_requests")
    @classmethod
    def _pending(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("0 makes the backend unreachable over HTTP/1.1: a request waiting for a new "
                             "connection counts as pending in Envoy, so every such request would get 503; use 1 or more")
        return value

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"perEndpoint": ""}, "circuitBreaker")


# -- health checks ----------------------------------------------------------------------------


class HTTPActiveHealthChecker(Model):
    hostname: str | None = Field(None, max_length=253, description="Host header of the checks. Default: the cluster name.")
    path: str = Field(min_length=1, max_length=1024, pattern=r"^/[^\s?#]*(\?[^\s#]*)?$",
                      description="Path requested by each check.")
    method: Literal["GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH", "TRACE"] | None = Field(
        None, description="Default GET.")
    expected_statuses: list[int] | None = Field(None, max_length=32, description="Healthy statuses. Default 200 only.")

    @field_validator("expected_statuses")
    @classmethod
    def _codes(cls, codes: list[int] | None) -> list[int] | None:
        for code in codes or ():
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status (100-599)")
        return codes

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"expectedResponse": ""}, "http")


class GRPCActiveHealthChecker(Model):
    service: str | None = Field(None, max_length=256, description="Service name sent in the gRPC health check "
                                "(grpc.health.v1). Default: the server's overall health.")


class TCPActiveHealthChecker(Model):
    """A TCP check: a connection that opens is healthy."""

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"send": "", "receive": ""}, "tcp")


class ActiveHealthCheck(Model):
    type: Literal["HTTP", "TCP", "GRPC"]
    timeout: Duration | None = Field(None, description="Time to wait for a check's answer. Default 1s.")
    interval: Duration | None = Field(None, description="Time between checks (also the first check of a new "
                                      "endpoint). Default 3s.")
    unhealthy_threshold: int | None = Field(None, ge=1, le=_U32, description="Failed checks in a row that make an "
                                            "endpoint unhealthy. Default 3.")
    healthy_threshold: int | None = Field(None, ge=1, le=_U32, description="Passed checks in a row that make it "
                                          "healthy again. Default 1.")
    http: HTTPActiveHealthChecker | None = None
    tcp: TCPActiveHealthChecker | None = None
    grpc: GRPCActiveHealthChecker | None = None

    _positive = field_validator("timeout", "interval")(classmethod(lambda cls, v: _positive(v)))

    @model_validator(mode="after")
    def _union(self) -> ActiveHealthCheck:
        if self.type == "HTTP" and self.http is None:
            raise ValueError("type HTTP needs http (at least its path)")
        for kind in ("http", "tcp", "grpc"):
            if getattr(self, kind) is not None and self.type.lower() != kind:
                raise ValueError(f"{kind} is only used with type {kind.upper()}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"initialJitter": "", "overrides": ""}, "active")


class PassiveHealthCheck(Model):
    split_external_local_origin_errors: bool | None = Field(
        None, description="Count connection failures and timeouts (local origin) apart from the backend's 5xx "
        "answers. Default false.")
    interval: Duration | None = Field(None, description="How often ejections are reviewed. Default 3s.")
    consecutive_local_origin_failures: int | None = Field(
        None, ge=0, le=_U32, description="Local-origin failures in a row that eject an endpoint (with "
        "splitExternalLocalOriginErrors). Default 5.")
    consecutive_gateway_errors: int | None = Field(
        None, ge=0, le=_U32, description="502/503/504 in a row that eject an endpoint. Default 0 (off).")
    consecutive_5xx_errors: int | None = Field(
        None, ge=0, le=_U32, alias="consecutive5XxErrors", description="5xx in a row that eject an endpoint. Default 5.")
    base_ejection_time: Duration | None = Field(
        None, description="How long an endpoint stays ejected (times the number of its ejections). Default 30s.")
    max_ejection_percent: int | None = Field(None, ge=0, le=100, description="Most endpoints ejected at once, in "
                                             "percent. Default 10 (at least one endpoint can always be ejected).")

    _positive = field_validator("interval", "base_ejection_time")(classmethod(lambda cls, v: _positive(v)))

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"failurePercentageThreshold": ""}, "passive")


class HealthCheck(Model):
    active: ActiveHealthCheck | None = None
    passive: PassiveHealthCheck | None = None
    panic_threshold: int | None = Field(
        None, ge=0, le=100, description="Below this percentage of healthy endpoints, Envoy balances over all of them "
        "(healthy or not) rather than overload the few left. Default 50; 0 disables.")


# -- load balancer ----------------------------------------------------------------------------


class ConsistentHashHeader(Model):
    name: HeaderName


class ConsistentHashCookie(Model):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
    ttl: Duration | None = Field(None, description="When set, Envoy gives a client without the cookie one with this "
                                 "lifetime: session affinity. Without it, only clients that have the cookie are pinned.")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"attributes": ""}, "cookie")


class ConsistentHashQueryParam(Model):
    name: str = Field(min_length=1, max_length=256)


class ConsistentHash(Model):
    type: Literal["SourceIP", "Header", "Cookie", "QueryParams"]
    header: ConsistentHashHeader | None = None
    cookie: ConsistentHashCookie | None = None
    query_params: list[ConsistentHashQueryParam] | None = Field(None, min_length=1, max_length=1,
                                                         description="One query parameter (meshgate: exactly one).")

    @model_validator(mode="after")
    def _union(self) -> ConsistentHash:
        wanted = {"Header": "header", "Cookie": "cookie", "QueryParams": "query_params"}.get(self.type)
        for kind in ("header", "cookie", "query_params"):
            alias = "queryParams" if kind == "query_params" else kind
            if kind == wanted and getattr(self, kind) is None:
                raise ValueError(f"type {self.type} needs {alias}")
            if kind != wanted and getattr(self, kind) is not None:
                raise ValueError(f"{alias} is not used with type {self.type}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"headers": "use type Header with header", "tableSize": ""}, "consistentHash")


class SlowStart(Model):
    window: Duration = Field(description="A new endpoint's share of traffic grows linearly over this time.")

    _positive = field_validator("window")(classmethod(lambda cls, v: _positive(v, "window")))


class BackendLoadBalancer(Model):
    type: Literal["RoundRobin", "LeastRequest", "Random", "ConsistentHash"]
    consistent_hash: ConsistentHash | None = None
    slow_start: SlowStart | None = None

    @model_validator(mode="after")
    def _union(self) -> BackendLoadBalancer:
        if (self.type == "ConsistentHash") != (self.consistent_hash is not None):
            raise ValueError("consistentHash is set with type ConsistentHash, and only then")
        if self.slow_start is not None and self.type not in ("RoundRobin", "LeastRequest"):
            raise ValueError("slowStart works with RoundRobin and LeastRequest only")
        return self

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"zoneAware": "", "endpointOverride": ""}, "loadBalancer")


# -- the kind ---------------------------------------------------------------------------------

_ROUTE_TARGETS = {(GATEWAY_GROUP, "HTTPRoute"), (GATEWAY_GROUP, "GRPCRoute"), ("meshgate.io", "HTTPRoute")}


class BackendTrafficPolicySpec(Model):
    target_refs: list[PolicyTargetReference] = Field(min_length=1, max_length=16)
    timeout: BackendTimeout | None = None
    retry: Retry | None = None
    circuit_breaker: CircuitBreaker | None = None
    health_check: HealthCheck | None = None
    load_balancer: BackendLoadBalancer | None = None
    # Shaping (meshgate.api.backend_traffic_shaping): enforced per route by Envoy's HTTP filters.
    rate_limit: RateLimitSpec | None = None
    compression: list[Compression] | None = Field(
        None, max_length=3, description="Compress responses with the algorithms the client accepts (Accept-Encoding), "
        "one item per algorithm; the client's preference (q-values) picks among them.")

    fault_injection: FaultInjection | None = Field(
        None, description="Delay or abort a share of the requests, as a failing backend would (tests of clients' "
        "resilience).")

    bandwidth_limit: BandwidthLimit | None = Field(
        None, description="Limit the body bytes per second of each request to the backend and/or response to the "
        "client (Envoy's `bandwidth_limit` filter).")
    cache: Cache | None = Field(
        None, description="meshgate extension. Serve cacheable responses from Envoy's in-memory cache (Envoy's "
        "`cache` filter, marked work-in-progress by Envoy), by their Cache-Control, Expires and Vary.")

    adaptive_concurrency: AdaptiveConcurrency | None = Field(
        None, description="meshgate extension. Limit the requests in flight to the backend to what it answers at "
        "its ideal latency, learned from the latencies Envoy sees (Envoy's `adaptive_concurrency` filter, gradient "
        "controller): requests over the limit get 503 at once instead of queueing. One limit per backend (per "
        "set of weighted backends) and listener.")

    response_override: list[ResponseOverride] | None = Field(
        None, max_length=16, description="Custom error pages: responses whose status matches get this body, content "
        "type and (optionally) status instead; the first override that matches applies.")

    _compression = field_validator("compression")(classmethod(lambda cls, v: check_compression(v)))

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, UNSUPPORTED, "BackendTrafficPolicy")

    @field_validator("target_refs")
    @classmethod
    def _targets(cls, refs: list[PolicyTargetReference]) -> list[PolicyTargetReference]:
        for ref in refs:
            if (ref.group, ref.kind) == (GATEWAY_GROUP, "Gateway"):
                if ref.section_name is not None:
                    raise ValueError("a BackendTrafficPolicy applies to a whole Gateway; a listener (sectionName) "
                                     "can't be targeted yet")
            elif (ref.group, ref.kind) not in _ROUTE_TARGETS:
                raise ValueError(f"a BackendTrafficPolicy targets a Gateway, HTTPRoute or GRPCRoute (group "
                                 f"{GATEWAY_GROUP}) or a meshgate.io HTTPRoute, not {ref.group or 'core'}/{ref.kind}")
        return refs


class BackendTrafficPolicy(Resource):
    """meshgate.io/v1alpha1 BackendTrafficPolicy: how Envoy talks to backends (timeouts, retries, circuit breakers, health checks, load balancing).

    Attached to a Gateway (all its routes), a route, or a named rule."""

    api_version: Literal["meshgate.io/v1alpha1"]
    kind: Literal["BackendTrafficPolicy"]
    spec: BackendTrafficPolicySpec
