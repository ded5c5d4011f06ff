"""BackendTrafficPolicy, shaping part: the fields that shape a route's traffic rather than the
connection to its backends, shaped like Envoy Gateway's (`api/v1alpha1/ratelimit_types.go`):
local and global rate limits (`rateLimit`), compression (`compression_types.go`), fault injection
(`fault_injection.go`).

Shapes and validation only. What they become: `meshgate.gatewayapi.backend_policy` (resolved per
route into `meshgate.ir.shaping`), then one Envoy HTTP filter each under
`meshgate.xds.translator.filters`. Everything here is enforced by Envoy itself.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from meshgate.api.models import ConfigMapReference, Duration, HeaderName, Model, _check_regex, duration_seconds
from meshgate.api.policies import Size, _check_size, _reject_unsupported, size_bytes

# -- rateLimit --------------------------------------------------------------------------------

# A rate-limit unit in seconds: how often Envoy refills a bucket (Envoy Gateway's month and year).
RATE_LIMIT_UNITS = {"Second": 1, "Minute": 60, "Hour": 3600, "Day": 86400, "Month": 30 * 86400, "Year": 365 * 86400}

_U32 = 4_294_967_295


class RateLimitHeaderMatch(Model):
    type: Literal["Exact", "RegularExpression", "Distinct"] = Field(
        "Exact", description="Exact: the header has this value; RegularExpression: its value matches this RE2 "
        "expression; Distinct: each value of the header has its own bucket (no `value`).")
    name: HeaderName
    value: str | None = Field(None, max_length=1024)
    invert: bool | None = Field(None, description="The rule applies to requests whose header does *not* match "
                                "(a missing header does not match). Not with Distinct.")

    @model_validator(mode="after")
    def _value(self) -> RateLimitHeaderMatch:
        if self.type == "Distinct":
            if self.value is not None or self.invert:
                raise ValueError("type Distinct takes no value and no invert: each value of the header is "
                                 "counted on its own")
        elif self.value is None:
            raise ValueError(f"type {self.type} needs a value")
        elif self.type == "RegularExpression":
            _check_regex(self.value)
        return self


class RateLimitMethodMatch(Model):
    value: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
    invert: bool | None = None


class SourceMatch(Model):
    type: Literal["Exact", "Distinct"] = Field(
        "Exact", description="Exact: every client address in the range shares one bucket; Distinct: each client "
        "address in the range has its own bucket.")
    value: str = Field(min_length=1, max_length=256, description="A CIDR range, e.g. `192.168.0.0/24`, "
                       "`2001:db8::/64`; `0.0.0.0/0` for every IPv4 client.")

    @field_validator("value")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR range (e.g. 10.0.0.0/8, 2001:db8::/32)") from None
        if "/" not in value:
            raise ValueError(f"{value!r} needs a prefix length (e.g. {value}/{net.max_prefixlen})")
        return str(net)  # network address: what Envoy's masked remote address produces


class RateLimitSelectCondition(Model):
    headers: list[RateLimitHeaderMatch] | None = Field(None, max_length=16, description="All must match.")
    methods: list[RateLimitMethodMatch] | None = Field(None, max_length=9, description="Any one must match.")
    source_cidr: SourceMatch | None = Field(None, alias="sourceCIDR")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"path": "use a policy on a rule with a path match"}, "clientSelectors")

    @model_validator(mode="after")
    def _some(self) -> RateLimitSelectCondition:
        if not (self.headers or self.methods or self.source_cidr):
            raise ValueError("a client selector needs headers, methods or sourceCIDR")
        if self.methods and len({m.invert or False for m in self.methods}) > 1:
            raise ValueError("methods must all be inverted or none (they are ORed)")
        return self


class RateLimitValue(Model):
    requests: int = Field(ge=1, le=_U32)
    unit: Literal["Second", "Minute", "Hour", "Day", "Month", "Year"]


class RateLimitRule(Model):
    client_selectors: list[RateLimitSelectCondition] | None = Field(
        None, max_length=8, description="All must hold for the rule to count a request. None: the rule counts "
        "every request of the route.")
    limit: RateLimitValue

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"cost": "", "shared": "", "shadowMode": ""}, "rules")


class LocalRateLimit(Model):
    rules: list[RateLimitRule] = Field(min_length=1, max_length=16, description="Each request is counted by every "
                                       "rule it matches, and refused when one of them is out of tokens.")

    @field_validator("rules")
    @classmethod
    def _one_default(cls, rules: list[RateLimitRule]) -> list[RateLimitRule]:
        if sum(1 for r in rules if not r.client_selectors) > 1:
            raise ValueError("only one rule may have no clientSelectors (the route's overall limit)")
        return rules


class GlobalRateLimit(Model):
    rules: list[RateLimitRule] = Field(min_length=1, max_length=128, description="Each request is counted by every "
                                       "rule it matches, across every Envoy of the Gateway, and refused when one "
                                       "of them is over its limit.")
    mode: Literal["Exact", "Budget"] | None = Field(
        None, description="meshgate extension. Exact (default): Envoy asks the edge companion about each request "
        "(Envoy's `ratelimit` filter; counters in Redis, fixed windows): exact counts, one call per request, for "
        "low rates (logins, costly calls). Budget: Envoy's `rate_limit_quota` filter, the companion hands each Envoy "
        "a share of the rate and Envoy enforces it alone (docs/traffic.md says how close it holds).")
    fail_closed: bool | None = Field(
        None, description="meshgate extension. When the companion (or its Redis) can't answer in time: false "
        "(default, as Envoy): let the request through; true: refuse it (503).")
    timeout: Duration | None = Field(
        None, description="meshgate extension. Exact mode: how long Envoy waits for the companion's answer before "
        "the failure mode applies. Default 100ms (Envoy's own default, 20ms, is short for a Python service).")

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str | None) -> str | None:
        if value is not None and not 0 < duration_seconds(value) <= 10:
            raise ValueError("the timeout must be more than 0 and at most 10s")
        return value

    @model_validator(mode="after")
    def _budget(self) -> GlobalRateLimit:
        if self.mode == "Budget":
            for rule in self.rules:
                if RATE_LIMIT_UNITS[rule.limit.unit] > 3600:
                    raise ValueError("mode Budget enforces rates (per Second, Minute or Hour); a quota per Day, "
                                     "Month or Year needs mode Exact")
                for selector in rule.client_selectors or ():
                    if selector.source_cidr is not None or selector.methods or any(
                            h.type == "RegularExpression" or h.invert for h in selector.headers or ()):
                        raise ValueError("mode Budget selects clients by headers (Exact or Distinct) only; "
                                         "use mode Exact for methods, sourceCIDR, regular expressions or invert")
        return self


class RateLimitSpec(Model):
    type: Literal["Local", "Global"] | None = Field(
        None, description="Local: each Envoy counts on its own (Envoy's `local_ratelimit`). Global: counted across "
        "every Envoy of the Gateway (by the edge companion, with Redis). Envoy Gateway deprecates `type` in favour "
        "of setting `local` and/or `global`.")
    local: LocalRateLimit | None = None
    global_: GlobalRateLimit | None = Field(None, alias="global")

    @model_validator(mode="after")
    def _local(self) -> RateLimitSpec:
        if self.type == "Global" and self.global_ is None:
            raise ValueError("type Global needs global (with its rules)")
        if self.type == "Local" and self.local is None:
            raise ValueError("type Local needs local (with its rules)")
        if self.local is None and self.global_ is None:
            raise ValueError("a rate limit needs local or global (with their rules)")
        return self


# -- compression ------------------------------------------------------------------------------


class GzipCompressor(Model):
    compression_level: int | None = Field(None, ge=1, le=9, description="zlib level, 1 (fastest) to 9 (smallest). "
                                          "Default: zlib's (6).")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"compressionStrategy": "", "memoryLevel": "", "windowBits": "",
                                          "chunkSize": ""}, "gzip")


class BrotliCompressor(Model):
    quality: int | None = Field(None, ge=0, le=11, description="0 (fastest) to 11 (smallest). Default 3.")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"encoderMode": "", "windowBits": "", "inputBlockBits": "", "chunkSize": "",
                                          "disableLiteralContextModeling": ""}, "brotli")


class ZstdCompressor(Model):
    compression_level: int | None = Field(None, ge=1, le=22, description="1 (fastest) to 22 (smallest). Default 3.")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"enableChecksum": "", "strategy": "", "chunkSize": ""}, "zstd")


# Envoy's compressor compresses these content types unless told otherwise.
DEFAULT_COMPRESSED_TYPES = ("text/html", "text/plain", "text/css", "application/javascript", "application/x-javascript",
                            "text/javascript", "text/x-javascript", "text/ecmascript", "text/js", "text/jscript",
                            "text/x-js", "application/ecmascript", "application/x-json", "application/xml",
                            "application/json", "image/svg+xml", "text/xml", "application/xhtml+xml")


class Compression(Model):
    type: Literal["Gzip", "Brotli", "Zstd"]
    gzip: GzipCompressor | None = None
    brotli: BrotliCompressor | None = None
    zstd: ZstdCompressor | None = None
    min_content_length: Size | None = Field(
        None, description="Responses smaller than this are sent as they are. Default 30 bytes (Envoy's minimum). "
        "A response without Content-Length (streamed) is compressed whatever its size.")
    content_types: list[str] | None = Field(
        None, min_length=1, max_length=50, description="meshgate extension. Content types (without parameters) "
        "that are compressed. Default: Envoy's list (text/html, text/plain, text/css, application/javascript, "
        "application/json, application/xml, image/svg+xml, ...).")

    @field_validator("min_content_length")
    @classmethod
    def _min(cls, value: Size | None) -> Size | None:
        if value is not None:
            _check_size(value)
            if size_bytes(value) < 30:
                raise ValueError("Envoy compresses nothing under 30 bytes: use 30 or more")
            if size_bytes(value) > _U32:
                raise ValueError("at most 4294967295 bytes")
        return value

    @field_validator("content_types")
    @classmethod
    def _types(cls, types: list[str] | None) -> list[str] | None:
        for t in types or ():
            if not re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", t):
                raise ValueError(f"{t!r} is not a content type in lowercase without parameters (e.g. application/json)")
        return types

    @model_validator(mode="after")
    def _union(self) -> Compression:
        for kind in ("gzip", "brotli", "zstd"):
            if getattr(self, kind) is not None and self.type.lower() != kind:
                raise ValueError(f"{kind} is only used with type {kind.capitalize()}")
        return self


def check_compression(items: list[Compression] | None) -> list[Compression] | None:
    if items and len({c.type for c in items}) != len(items):
        raise ValueError("each compression type may be listed once")
    return items


# -- faultInjection ---------------------------------------------------------------------------


class FaultInjectionDelay(Model):
    fixed_delay: Duration = Field(description="How long a delayed request waits before it goes on.")
    percentage: float | None = Field(None, ge=0, le=100, description="Share of requests delayed, in percent "
                                     "(to 0.0001%). Default 100.")

    @field_validator("fixed_delay")
    @classmethod
    def _positive(cls, value: str) -> str:
        if duration_seconds(value) <= 0:
            raise ValueError("the delay must be more than 0")
        return value


class FaultInjectionAbort(Model):
    http_status: int | None = Field(None, ge=200, le=599, description="The HTTP status the aborted request gets.")
    grpc_status: int | None = Field(None, ge=0, le=16, description="The gRPC status an aborted gRPC call gets "
                                    "(HTTP 200, trailers only).")
    percentage: float | None = Field(None, ge=0, le=100, description="Share of requests aborted, in percent "
                                     "(to 0.0001%). Default 100.")

    @model_validator(mode="after")
    def _one(self) -> FaultInjectionAbort:
        if (self.http_status is None) == (self.grpc_status is None):
            raise ValueError("an abort needs exactly one of httpStatus and grpcStatus")
        return self


class FaultInjection(Model):
    delay: FaultInjectionDelay | None = None
    abort: FaultInjectionAbort | None = None

    @model_validator(mode="after")
    def _some(self) -> FaultInjection:
        if self.delay is None and self.abort is None:
            raise ValueError("fault injection needs a delay, an abort or both")
        return self


# -- responseOverride -------------------------------------------------------------------------


class StatusCodeRange(Model):
    start: int = Field(ge=100, le=599)
    end: int = Field(ge=100, le=599)

    @model_validator(mode="after")
    def _order(self) -> StatusCodeRange:
        if self.end < self.start:
            raise ValueError("end must not be less than start")
        return self


class StatusCodeMatch(Model):
    type: Literal["Value", "Range"] = "Value"
    value: int | None = Field(None, ge=100, le=599)
    range: StatusCodeRange | None = None

    @model_validator(mode="after")
    def _for_type(self) -> StatusCodeMatch:
        if self.type == "Value" and (self.value is None or self.range is not None):
            raise ValueError("type Value needs value (and no range)")
        if self.type == "Range" and (self.range is None or self.value is not None):
            raise ValueError("type Range needs range (and no value)")
        return self

    def codes(self) -> tuple[int, int]:
        """(first, last) status code matched."""
        return (self.value, self.value) if self.type == "Value" else (self.range.start, self.range.end)


class CustomResponseMatch(Model):
    status_codes: list[StatusCodeMatch] = Field(min_length=1, max_length=50)


# The ConfigMap key a response body valueRef reads (else the ConfigMap's only or first key), as in Envoy Gateway.
BODY_CONFIG_MAP_KEY = "response.body"


class CustomResponseBody(Model):
    type: Literal["Inline", "ValueRef"] = "Inline"
    inline: str | None = Field(None, max_length=65536)
    value_ref: ConfigMapReference | None = Field(
        None, description=f"A ConfigMap in the policy's namespace holding the body under key `{BODY_CONFIG_MAP_KEY}` "
        "(else its first key, alphabetically); a change to it takes effect live.")

    @model_validator(mode="after")
    def _inline(self) -> CustomResponseBody:
        if self.type == "ValueRef":
            if self.value_ref is None or self.inline is not None:
                raise ValueError("type ValueRef needs valueRef (and no inline)")
        elif self.inline is None or self.value_ref is not None:
            raise ValueError("type Inline needs inline (and no valueRef)")
        return self


class CustomResponse(Model):
    content_type: str | None = Field(None, max_length=256, pattern=r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(;.*)?$")
    body: CustomResponseBody | None = None
    status_code: int | None = Field(None, ge=100, le=599, description="Answer with this status instead of the matched one.")


class ResponseOverride(Model):
    """Replace a response (the upstream's or Envoy's own) whose status matches, e.g. an error page."""

    match: CustomResponseMatch
    response: CustomResponse

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict) and "redirect" in data:
            raise ValueError("responseOverride field 'redirect' (from Envoy Gateway) is not supported by meshgate yet")
        return data


# -- adaptiveConcurrency (meshgate extension) -------------------------------------------------
# Envoy's `adaptive_concurrency` filter (gradient controller), with the field names of Envoy's
# proto in camelCase, as proposed for Envoy Gateway (envoyproxy/gateway#8272, not merged).


class ConcurrencyLimitParams(Model):
    max_concurrency_limit: int | None = Field(None, ge=1, le=_U32, description="The limit never grows above this. "
                                              "Default 1000.")
    concurrency_update_interval: Duration | None = Field(
        None, description="How often the limit is recalculated from the latencies sampled since the last time. "
        "Default 100ms.")

    @field_validator("concurrency_update_interval")
    @classmethod
    def _positive(cls, value: str | None) -> str | None:
        if value is not None and duration_seconds(value) <= 0:
            raise ValueError("the interval must be more than 0")
        return value


class MinRttCalcParams(Model):
    interval: Duration | None = Field(
        None, description="How often the ideal latency (minRTT) is measured again, by letting only minConcurrency "
        "requests through until requestCount have completed. Default 30s. Either this or fixedValue.")
    fixed_value: Duration | None = Field(
        None, description="The backend's ideal latency, when it is known: no measurement windows (and none of their "
        "503s). Either this or interval.")
    request_count: int | None = Field(None, ge=1, le=_U32, description="Requests sampled per minRTT measurement. "
                                      "Default 50.")
    jitter: float | None = Field(None, ge=0, le=100, description="Random delay added to each interval, in percent "
                                 "of it, so that Envoys don't measure at the same time. Default 15.")
    min_concurrency: int | None = Field(None, ge=1, le=_U32, description="The limit during a minRTT measurement "
                                        "(and its lowest value). Default 3.")
    buffer: float | None = Field(None, ge=0, le=100, description="Latency above minRTT still counted as ideal, in "
                                 "percent of it. Default 25.")

    @model_validator(mode="after")
    def _one(self) -> MinRttCalcParams:
        if self.interval is not None and self.fixed_value is not None:
            raise ValueError("set interval (measure the ideal latency) or fixedValue (give it), not both")
        for name in ("interval", "fixed_value"):
            value = getattr(self, name)
            if value is not None and duration_seconds(value) <= 0:
                raise ValueError(f"{name} must be more than 0")
        return self


class AdaptiveConcurrency(Model):
    sample_aggregate_percentile: float | None = Field(
        None, ge=0, le=100, description="The latency percentile compared with the ideal latency (minRTT). Default 50.")
    concurrency_limit_params: ConcurrencyLimitParams | None = None
    min_rtt_calc_params: MinRttCalcParams | None = Field(None, alias="minRTTCalcParams")
    concurrency_limit_exceeded_status: int | None = Field(
        None, ge=400, le=599, description="The status of a request refused over the limit. Default 503.")

    @field_validator("concurrency_limit_exceeded_status")
    @classmethod
    def _known_status(cls, value: int | None) -> int | None:
        # Envoy takes only the statuses its HttpStatus enum names (and refuses the config otherwise).
        if value is not None and value not in _ENVOY_ERROR_STATUSES:
            raise ValueError(f"{value} is not a status Envoy can send here; one of "
                             f"{', '.join(map(str, _ENVOY_ERROR_STATUSES))}")
        return value


_ENVOY_ERROR_STATUSES = (400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416,
                         417, 421, 422, 423, 424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507,
                         508, 510, 511)
