"""BackendTrafficPolicy `bandwidthLimit` (Envoy Gateway's field) and `cache` (a meshgate
extension: Envoy Gateway has no cache), both enforced per route by Envoy's HTTP filters
(`bandwidth_limit`, `cache`). Shapes only: IR in `meshgate.gatewayapi.shaping`, Envoy config in
`meshgate.xds.translator.filters.bandwidth_limit` and `.cache`."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from meshgate.api.models import Model
from meshgate.api.policies import Size, _check_size, size_bytes

_MAX_KIB = 4_294_967_295  # Envoy's limit_kbps is a uint64, but a KiB/s limit over 4 TiB/s makes no sense


def _kib_per_second(value: Size) -> Size:
    _check_size(value)
    n = size_bytes(value)
    # Envoy's bandwidth_limit counts in KiB/s (`limit_kbps`, 1024 bytes): a limit must be whole KiB.
    if n % 1024:
        raise ValueError(f"Envoy limits bandwidth in KiB per second: use a multiple of 1Ki (1024 bytes), not {n} bytes")
    if n // 1024 > _MAX_KIB:
        raise ValueError("at most 4294967295Ki per second")
    return value


class BandwidthLimitResponseTrailers(Model):
    prefix: str | None = Field(
        None, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="Prefix of the trailers Envoy adds with the delays it introduced (`<prefix>-bandwidth-request-"
        "delay-ms`, `-response-delay-ms`, `-request-filter-delay-ms`, `-response-filter-delay-ms`). Default: no prefix.")


class BandwidthLimitRequest(Model):
    limit: Size = Field(description="Bytes per second of request body sent to the backend, as a quantity "
                        "(`100Ki`, `1Mi`); a multiple of 1Ki.")

    _limit = field_validator("limit")(classmethod(lambda cls, v: _kib_per_second(v)))


class BandwidthLimitResponse(Model):
    limit: Size = Field(description="Bytes per second of response body sent to the client, as a quantity; a "
                        "multiple of 1Ki.")
    response_trailers: BandwidthLimitResponseTrailers | None = Field(
        None, description="Add trailers saying how long the limit delayed the request and the response.")

    _limit = field_validator("limit")(classmethod(lambda cls, v: _kib_per_second(v)))


class BandwidthLimit(Model):
    """Envoy Gateway's `bandwidthLimit`: the body bytes per second of each request and/or response
    of the route (Envoy's `bandwidth_limit` filter: a token bucket per filter instance and route,
    refilled every 50 ms, shared by the route's concurrent streams on one Envoy worker)."""

    request: BandwidthLimitRequest | None = None
    response: BandwidthLimitResponse | None = None

    @model_validator(mode="after")
    def _some(self) -> BandwidthLimit:
        if self.request is None and self.response is None:
            raise ValueError("a bandwidth limit needs request, response or both")
        return self


class Cache(Model):
    """meshgate extension: responses of the route are kept in Envoy's in-memory cache (Envoy's
    `cache` filter with `simple_http_cache`, which Envoy marks work-in-progress) and served from it
    while fresh, as HTTP caching (RFC 9111) says: only cacheable responses (`Cache-Control:
    max-age`/`s-maxage` or `Expires`; not `no-store`, `private`; not a response with `Vary`),
    `Age` on hits, validation with `If-None-Match`/`If-Modified-Since` when stale."""

    max_body_size: Size | None = Field(
        None, description="Responses with a bigger body are not cached. Default: no limit but the cache's own.")
    ignore_request_cache_control: bool | None = Field(
        None, description="Ignore the client's `Cache-Control` (`no-cache`, `no-store`, `max-age=0`), which by "
        "default bypasses or revalidates the cached copy. Default false.")

    _size = field_validator("max_body_size")(classmethod(lambda cls, v: v if v is None else _check_size(v)))

    @model_validator(mode="before")
    @classmethod
    def _no_vary(cls, data: Any) -> Any:
        if isinstance(data, dict) and "allowedVaryHeaders" in data:
            # Envoy's allowed_vary_headers: Envoy 1.40 crashes (SIGSEGV) on a cached response
            # varying on an allowed header (seen in tests/test_e2e_cache_bandwidth.py's first version).
            raise ValueError("allowedVaryHeaders is not supported: Envoy 1.40 crashes when it caches a response "
                             "that varies on an allowed header; responses with Vary are never cached")
        return data
