"""The edge companion's quota server (`envoy.service.rate_limit_quota.v3.RateLimitQuotaService/
StreamRateLimitQuotas`, RLQS): global rate limits as budgets (`rateLimit.global`, mode Budget).

Each Envoy keeps one stream open and reports, every second, how many requests each of its
buckets allowed and denied. For each report the server answers with that Envoy's share of the
bucket's rule: a token bucket (continuous refill) that Envoy enforces alone, no call per request.

Shares follow demand. A stream's demand for a bucket is its requests (allowed + denied) per
second since its previous report (the server's own clock: Envoy reports elapsed time in whole
seconds). Demands live in Redis, one hash per bucket (`meshgate:rlqs:<bucket>`: stream id ->
"demand:time"), so every companion replica sees every Envoy's; entries older than
`STALE_AFTER_S` (an Envoy gone) no longer count. With total demand D and rate R:

- D > R: each stream gets R x its demand / D (all are throttled alike; the total is R);
- D <= R: each gets its demand plus an equal part of the rest (R - D) / n (the total is R, and
  a stream whose load grows has room before its next report).

An assignment lives `ASSIGNMENT_TTL_S` unless renewed (it is renewed every report); when the
server is gone it expires, and Envoy's configured fallback (allow all, or deny all) applies.
Redis unreachable: a stream's share is computed from its own demand alone (the whole rate),
logged: each Envoy then enforces the full rate on its own, the limit is no longer global.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import grpc
from envoy.service.rate_limit_quota.v3 import rlqs_pb2

log = logging.getLogger("meshgate.edge.quota")

QUOTA_SERVICE = "envoy.service.rate_limit_quota.v3.RateLimitQuotaService"
KEY_PREFIX = "meshgate:rlqs"
ASSIGNMENT_TTL_S = 5
STALE_AFTER_S = 3.5  # 3+ missed reports (1 s apart): that Envoy is gone
FILL_INTERVAL_S = 10  # tokens_per_fill per 10 s: a share's rate to 0.1 request/s (Envoy wants whole seconds)
BURST_S = 0.2  # a bucket holds at most this many seconds of its share
CHANGE_BELOW = 0.05  # a share that moved less than this is sent unchanged
_EWMA = 0.5  # weight of the newest report in a stream's demand


def allocate(rate: float, demands: dict[str, float], me: str) -> float:
    """The share (requests/s) of stream `me`, from every live stream's demand (`me` included)."""
    total = sum(demands.values())
    n = max(len(demands), 1)
    if total <= 0:
        return rate / n
    if total > rate:
        return rate * demands.get(me, 0.0) / total
    return demands.get(me, 0.0) + (rate - total) / n


def _bucket_key(bucket_id: rlqs_pb2.BucketId) -> str:
    return ",".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(bucket_id.bucket.items()))


class QuotaService:
    """StreamRateLimitQuotas over a Redis client (redis.asyncio); `rules` (meshgate.edge.ratelimit.Rule
    by id) is replaced whole on each config."""

    def __init__(self, redis, metrics=None) -> None:  # noqa: ANN001
        self.redis = redis
        self.rules: dict = {}
        self.metrics = metrics
        self.streams = 0

    async def stream(self, reports: AsyncIterator[rlqs_pb2.RateLimitQuotaUsageReports],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[rlqs_pb2.RateLimitQuotaResponse]:
        sid = uuid.uuid4().hex[:16]
        last: dict[str, tuple[float, float]] = {}  # bucket key -> (time of the previous report, demand)
        sent: dict[str, int] = {}  # bucket key -> tokens per fill last assigned
        self.streams += 1
        log.info("quota stream opened", extra={"stream": sid, "peer": context.peer()})
        try:
            async for report in reports:
                response = await self._answer(sid, report, last, sent)
                if response.bucket_action:
                    yield response
        finally:
            self.streams -= 1
            log.info("quota stream closed", extra={"stream": sid})

    async def _answer(self, sid: str, report: rlqs_pb2.RateLimitQuotaUsageReports,
                      last: dict[str, tuple[float, float]], sent: dict[str, int]) -> rlqs_pb2.RateLimitQuotaResponse:
        now = time.time()
        ours = []
        for usage in report.bucket_quota_usages:
            rule = self.rules.get(usage.bucket_id.bucket.get("rule", ""))
            if rule is None or rule.mode != "Budget":
                continue
            key = _bucket_key(usage.bucket_id)
            requests = usage.num_requests_allowed + usage.num_requests_denied
            previous = last.get(key)
            if previous is None:
                demand = None  # a new bucket: no rate known yet
            else:
                elapsed = max(now - previous[0], 0.05)
                demand = requests / elapsed if previous[1] < 0 else _EWMA * requests / elapsed + (1 - _EWMA) * previous[1]
            last[key] = (now, -1.0 if demand is None else demand)
            ours.append((usage, rule, key, demand))
        response = rlqs_pb2.RateLimitQuotaResponse()
        if not ours:
            return response
        demands = await self._exchange(sid, now, ours)
        for usage, rule, key, demand in ours:
            rate = rule.requests / rule.seconds
            live = demands.get(key) or {sid: demand or 0.0}
            if demand is None:
                share = rate / max(len(live), 1)  # a newcomer: an equal part until it has reported
            else:
                share = allocate(rate, live, sid)
            action = response.bucket_action.add()
            action.bucket_id.CopyFrom(usage.bucket_id)
            assignment = action.quota_assignment_action
            assignment.assignment_time_to_live.FromSeconds(ASSIGNMENT_TTL_S)
            bucket = assignment.rate_limit_strategy.token_bucket
            bucket.fill_interval.FromSeconds(FILL_INTERVAL_S)
            tokens = max(int(round(share * FILL_INTERVAL_S)), 1)
            before = sent.get(key)
            if before is not None and abs(tokens - before) <= CHANGE_BELOW * before:
                tokens = before  # the same bucket: Envoy keeps it (a changed one starts anew, with its burst)
            sent[key] = tokens
            bucket.tokens_per_fill.value = tokens
            bucket.max_tokens = max(int(round(tokens / FILL_INTERVAL_S * BURST_S)), 1)
        if self.metrics is not None:
            self.metrics.quota_reports.inc()
        return response

    async def _exchange(self, sid: str, now: float, ours: list) -> dict[str, dict[str, float]]:
        """Record this stream's demands in Redis and read every live stream's, by bucket key."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            for _, _, key, demand in ours:
                redis_key = f"{KEY_PREFIX}:{key}"
                if demand is not None:
                    pipe.hset(redis_key, sid, f"{demand:.3f}:{now:.3f}")
                pipe.expire(redis_key, 30)
                pipe.hgetall(redis_key)
            results = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - without Redis: shares among this companion's streams only
            log.warning("quota shares unavailable in Redis; sharing locally", extra={"error": f"{type(exc).__name__}: {exc}"})
            return {}
        out: dict[str, dict[str, float]] = {}
        position = 0
        for _, _, key, demand in ours:
            position += 2 if demand is not None else 1
            entries = results[position]
            position += 1
            live = {}
            for stream, value in entries.items():
                d, _, t = value.decode().partition(":")
                if now - float(t) <= STALE_AFTER_S:
                    live[stream.decode()] = float(d)
            out[key] = live
        return out


__all__ = ["QUOTA_SERVICE", "QuotaService", "allocate"]
