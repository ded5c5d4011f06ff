"""The edge companion's rate-limit service (`envoy.service.ratelimit.v3.RateLimitService/
ShouldRateLimit`): exact global rate limits, counted in Redis, asked by Envoy's `ratelimit`
filter for each request of a route with `rateLimit.global` in mode Exact.

Fixed windows, as Envoy's reference service (envoyproxy/ratelimit) counts: a rule of N requests
per unit has one counter per window of that unit (aligned on the epoch: minute windows start at
:00), per distinct descriptor. Each request adds its hits to the counters of its descriptors in
one Redis round trip (a pipeline of `INCRBY key hits` + `EXPIRE key unit` per descriptor, in a
MULTI so that no counter is left without its expiry), and is over the limit when a counter passes
N. Every companion replica sees the same counters: the limit holds across every Envoy.

A counter's key is `meshgate:rl:<domain>:<entries>:<window start>`, the entries percent-encoded
`key=value` pairs, so that values with separators in them can't collide.

Like envoyproxy/ratelimit, requests refused still count (a client that keeps hammering stays
refused until the window ends), and at a window's edge a client can pass up to twice N in a short
time (the end of one window and the start of the next).

When Redis does not answer (down, or slower than `redis_timeout_s`), the call fails with
UNAVAILABLE and Envoy applies the route's failure mode (let through, or refuse with 503).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from meshgate.edge.tracing import record, trace_of

log = logging.getLogger("meshgate.edge.ratelimit")

RATE_LIMIT_SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
KEY_PREFIX = "meshgate:rl"
_UNITS = {1: rls_pb2.RateLimitResponse.RateLimit.SECOND, 60: rls_pb2.RateLimitResponse.RateLimit.MINUTE,
          3600: rls_pb2.RateLimitResponse.RateLimit.HOUR, 86400: rls_pb2.RateLimitResponse.RateLimit.DAY,
          30 * 86400: rls_pb2.RateLimitResponse.RateLimit.MONTH, 365 * 86400: rls_pb2.RateLimitResponse.RateLimit.YEAR}


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a global limit: `requests` per `seconds`, for descriptors with these entries."""

    name: str  # the rule id, "<route>#<index>": the value of the descriptor's first entry
    requests: int
    seconds: int
    entries: tuple[tuple[str, str | None], ...]  # value None: any value, each its own counter
    mode: str = "Exact"

    def matches(self, entries) -> bool:  # noqa: ANN001 - a repeated RateLimitDescriptor.Entry
        if len(entries) != len(self.entries):
            return False
        return all(e.key == key and (value is None or e.value == value)
                   for e, (key, value) in zip(entries, self.entries))


def rules_from(resources: Mapping[str, object]) -> dict[str, Rule]:
    """RateLimitConfig resources (meshgate.edge.config) -> rules by id."""
    out = {}
    for name, msg in resources.items():
        s = msg.settings
        entries = tuple((str(e["key"]), str(e["value"]) if "value" in e else None) for e in s["entries"])
        out[name] = Rule(name=name, requests=int(s["requests"]), seconds=int(s["seconds"]), entries=entries,
                         mode=str(s["mode"]) if "mode" in s else "Exact")
    return out


def counter_key(domain: str, entries, window_start: int) -> str:  # noqa: ANN001
    parts = ",".join(f"{quote(e.key, safe='')}={quote(e.value, safe='')}" for e in entries)
    return f"{KEY_PREFIX}:{quote(domain, safe='')}:{parts}:{window_start}"


class RateLimitService:
    """ShouldRateLimit over a Redis client (redis.asyncio); `rules` is replaced whole on each config."""

    def __init__(self, redis, metrics=None) -> None:  # noqa: ANN001
        self.redis = redis
        self.rules: dict[str, Rule] = {}
        self.metrics = metrics
        self.clock = time.time
        self.spans = None  # meshgate.otlp.SpanQueue while tracing is on (meshgate.edge.tracing)

    async def should_rate_limit(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        request = rls_pb2.RateLimitRequest.FromString(data)
        hits = request.hits_addend or 1
        now = self.clock()
        rules = self.rules
        counted: list[tuple[int, Rule, str, int]] = []  # (descriptor index, rule, key, window start)
        for i, descriptor in enumerate(request.descriptors):
            entries = descriptor.entries
            rule = rules.get(entries[0].value) if entries and entries[0].key == "rule" else None
            if rule is None or not rule.matches(entries):
                continue  # not a descriptor of ours, or a rule no longer in force: not limited
            start = int(now) - int(now) % rule.seconds
            counted.append((i, rule, counter_key(request.domain, entries, start), start))
        response = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)
        statuses = [rls_pb2.RateLimitResponse.DescriptorStatus(code=rls_pb2.RateLimitResponse.OK)
                    for _ in request.descriptors]
        if counted:
            try:
                pipe = self.redis.pipeline(transaction=True)
                for _, rule, key, _ in counted:
                    pipe.incrby(key, hits)
                    pipe.expire(key, rule.seconds)
                results = await pipe.execute()
            except Exception as exc:  # noqa: BLE001 - any Redis failure: Envoy's failure mode decides
                if self.metrics is not None:
                    self.metrics.rate_limit_decisions.labels("error").inc()
                log.warning("rate-limit counters unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
                await context.abort(grpc.StatusCode.UNAVAILABLE, "rate-limit counters unavailable")
            over_reset = 0
            for n, (i, rule, _, start) in enumerate(counted):
                count = int(results[2 * n])
                status = statuses[i]
                status.current_limit.requests_per_unit = rule.requests
                status.current_limit.unit = _UNITS.get(rule.seconds, rls_pb2.RateLimitResponse.RateLimit.SECOND)
                # (no current_limit.name: Envoy would show it, a route's name, in x-ratelimit-limit)
                status.limit_remaining = max(rule.requests - count, 0)
                reset = max(start + rule.seconds - now, 0.0)
                status.duration_until_reset.FromMilliseconds(int(reset * 1000))
                if count > rule.requests:
                    status.code = rls_pb2.RateLimitResponse.OVER_LIMIT
                    response.overall_code = rls_pb2.RateLimitResponse.OVER_LIMIT
                    over_reset = max(over_reset, int(reset) + (1 if reset % 1 else 0))
            if response.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT:
                # Seconds until the (last) window that refused it starts again.
                response.response_headers_to_add.append(base_pb2.HeaderValue(key="retry-after",
                                                                             value=str(max(over_reset, 1))))
        response.statuses.extend(statuses)
        result = ("over_limit" if response.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
                  else "ok" if counted else "unlimited")
        if self.metrics is not None:
            self.metrics.rate_limit_decisions.labels(result).inc()
        if self.spans is not None:
            record(self.spans, trace_of(context), "meshgate.edge.rate_limit", time.perf_counter() - started,
                   {"meshgate.result": result, "meshgate.rules": ",".join(sorted({r.name for _, r, _, _ in counted}))})
        return response.SerializeToString()


__all__ = ["KEY_PREFIX", "RATE_LIMIT_SERVICE", "RateLimitService", "Rule", "counter_key", "rules_from"]
