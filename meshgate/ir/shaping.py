"""IR types of traffic shaping (BackendTrafficPolicy `rateLimit`, `compression`, `faultInjection`, resolved per route). Types
only, Envoy-agnostic, never changed after they are built (see `meshgate.ir`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, unsafe_hash=True)
class RateLimitCondition:
    """One condition a request must meet to be counted by a rule."""

    kind: str  # "header" (value or regex) | "distinct_header" | "method" | "cidr" | "distinct_cidr"
    name: str = ""  # header name
    value: str = ""  # header value or regex; methods as "GET|POST"; CIDR as "10.0.0.0/8"
    regex: bool = False
    invert: bool = False


@dataclass(slots=True, unsafe_hash=True)
class RateLimitRule:
    conditions: tuple[RateLimitCondition, ...]  # all must hold; empty: every request
    requests: int
    interval_s: int  # the bucket holds `requests` tokens and is refilled every interval


@dataclass(slots=True, unsafe_hash=True)
class LocalRateLimit:
    """Per-proxy limits of one route: a request is refused (429) when a rule it matches is out of tokens."""

    rules: tuple[RateLimitRule, ...]


@dataclass(slots=True, unsafe_hash=True)
class GlobalRateLimit:
    """Limits of one route counted across every Envoy of the Gateway (meshgate.xds.translator.filters.ratelimit
    and rate_limit_quota; the edge companion counts)."""

    rules: tuple[RateLimitRule, ...]
    mode: str = "Exact"  # "Exact": asked per request (counters in Redis) | "Budget": Envoy enforces shares (RLQS)
    fail_closed: bool = False  # companion or Redis down: refuse (True) or let through (False)
    timeout_s: float = 0.1  # Exact: how long Envoy waits for the answer


@dataclass(slots=True, unsafe_hash=True)
class Compressor:
    """Responses compressed with one algorithm, for clients that accept it."""

    kind: str  # "gzip" | "brotli" | "zstd" (the Accept-Encoding token: gzip, br, zstd)
    level: int | None = None  # gzip/zstd level, brotli quality; None: the library's default
    min_length: int = 30  # bytes
    content_types: tuple[str, ...] = ()  # empty: the proxy's default list


@dataclass(slots=True, unsafe_hash=True)
class Fault:
    """Faults injected into a share of a route's requests (shares per million)."""

    delay_s: float | None = None
    delay_per_million: int = 1_000_000
    abort_http_status: int | None = None
    abort_grpc_status: int | None = None
    abort_per_million: int = 1_000_000


@dataclass(slots=True, unsafe_hash=True)
class ResponseOverride:
    """Responses whose status is in one of `codes` ((first, last) inclusive) are replaced."""

    codes: tuple[tuple[int, int], ...]
    body: str | None = None  # None: keep the body
    content_type: str | None = None
    status: int | None = None  # None: keep the status


@dataclass(slots=True, unsafe_hash=True)
class BandwidthLimit:
    """Body bytes per second of a route's requests and/or responses (None: not limited)."""

    request_kib: int | None = None
    response_kib: int | None = None
    trailers: bool = False  # add the delay trailers to responses
    trailer_prefix: str = ""


@dataclass(slots=True, unsafe_hash=True)
class Cache:
    """A route's responses cached by the proxy, as HTTP caching rules allow."""

    max_body_bytes: int = 0  # 0: no limit
    ignore_request_cache_control: bool = False


@dataclass(slots=True, unsafe_hash=True)
class AdaptiveConcurrency:
    """A concurrency limit the proxy adapts to the backend's latency (gradient controller); None
    fields: the proxy's defaults."""

    percentile: float | None = None  # sampled latency percentile compared with the ideal one
    max_limit: int | None = None
    update_interval_s: float | None = None
    min_rtt_interval_s: float | None = None  # how often the ideal latency is measured again
    min_rtt_fixed_s: float | None = None  # or the ideal latency itself
    request_count: int | None = None
    jitter_percent: float | None = None
    min_concurrency: int | None = None
    buffer_percent: float | None = None
    exceeded_status: int | None = None


@dataclass(slots=True, unsafe_hash=True)
class Shaping:
    """How a route's traffic is shaped (BackendTrafficPolicy, resolved); None fields: not shaped."""

    local_rate_limit: LocalRateLimit | None = None
    global_rate_limit: GlobalRateLimit | None = None
    compression: tuple[Compressor, ...] = ()
    fault: Fault | None = None
    response_overrides: tuple[ResponseOverride, ...] = ()  # the first that matches applies
    bandwidth: BandwidthLimit | None = None
    cache: Cache | None = None
    adaptive_concurrency: AdaptiveConcurrency | None = None
