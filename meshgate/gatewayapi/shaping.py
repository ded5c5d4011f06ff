"""BackendTrafficPolicy shaping fields → IR (`meshgate.ir.shaping`), from the merged spec of a
route rule (merging along Gateway → route → rule is `meshgate.gatewayapi.backend_policy`'s: a
more specific policy's `rateLimit` replaces the general one's rules as a whole)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from meshgate.api.backend_traffic_shaping import RATE_LIMIT_UNITS
from meshgate.api.models import duration_seconds
from meshgate.api.policies import size_bytes
from meshgate.ir import shaping as ir


def route_shaping(spec: Mapping[str, Any]) -> ir.Shaping | None:
    """The shaping part of a merged spec (snake_case dict), or None when it has none."""
    rate_limit = spec.get("rate_limit")
    local = _local_rate_limit(rate_limit["local"]) if rate_limit and "local" in rate_limit else None
    global_ = _global_rate_limit(rate_limit["global_"]) if rate_limit and "global_" in rate_limit else None
    compression = tuple(_compressor(c) for c in spec.get("compression", ()))
    fault = _fault(spec["fault_injection"]) if "fault_injection" in spec else None
    overrides = tuple(_override(o) for o in spec.get("response_override", ()))
    bandwidth = _bandwidth(spec["bandwidth_limit"]) if "bandwidth_limit" in spec else None
    cache = _cache(spec["cache"]) if "cache" in spec else None
    adaptive = _adaptive(spec["adaptive_concurrency"]) if "adaptive_concurrency" in spec else None
    if (local is None and global_ is None and not compression and fault is None and not overrides
            and bandwidth is None and cache is None and adaptive is None):
        return None
    return ir.Shaping(local_rate_limit=local, global_rate_limit=global_, compression=compression, fault=fault, response_overrides=overrides,
                      bandwidth=bandwidth, cache=cache, adaptive_concurrency=adaptive)


def _adaptive(a: Mapping[str, Any]) -> ir.AdaptiveConcurrency:
    limits, rtt = a.get("concurrency_limit_params") or {}, a.get("min_rtt_calc_params") or {}

    def seconds(d: Mapping[str, Any], key: str) -> float | None:
        return duration_seconds(d[key]) if d.get(key) is not None else None

    return ir.AdaptiveConcurrency(
        percentile=a.get("sample_aggregate_percentile"), max_limit=limits.get("max_concurrency_limit"),
        update_interval_s=seconds(limits, "concurrency_update_interval"),
        min_rtt_interval_s=seconds(rtt, "interval"), min_rtt_fixed_s=seconds(rtt, "fixed_value"),
        request_count=rtt.get("request_count"), jitter_percent=rtt.get("jitter"),
        min_concurrency=rtt.get("min_concurrency"), buffer_percent=rtt.get("buffer"),
        exceeded_status=a.get("concurrency_limit_exceeded_status"))


def _bandwidth(b: Mapping[str, Any]) -> ir.BandwidthLimit:
    request, response = b.get("request"), b.get("response")
    trailers = response.get("response_trailers") if response else None
    return ir.BandwidthLimit(
        request_kib=size_bytes(request["limit"]) // 1024 if request else None,
        response_kib=size_bytes(response["limit"]) // 1024 if response else None,
        trailers=trailers is not None, trailer_prefix=(trailers or {}).get("prefix") or "")


def _cache(c: Mapping[str, Any]) -> ir.Cache:
    return ir.Cache(max_body_bytes=size_bytes(c["max_body_size"]) if "max_body_size" in c else 0,
                    ignore_request_cache_control=bool(c.get("ignore_request_cache_control")))


def _override(o: Mapping[str, Any]) -> ir.ResponseOverride:
    codes = tuple((m["value"], m["value"]) if m.get("type", "Value") == "Value" else (m["range"]["start"], m["range"]["end"])
                  for m in o["match"]["status_codes"])
    response = o["response"]
    body = response.get("body")
    return ir.ResponseOverride(codes=codes, body=body["inline"] if body else None,
                               content_type=response.get("content_type"), status=response.get("status_code"))


def _per_million(percentage: float | None) -> int:
    return 1_000_000 if percentage is None else round(percentage * 10_000)


def _fault(f: Mapping[str, Any]) -> ir.Fault:
    delay, abort = f.get("delay"), f.get("abort")
    out = ir.Fault()
    if delay is not None:
        out = replace(out, delay_s=duration_seconds(delay["fixed_delay"]), delay_per_million=_per_million(delay.get("percentage")))
    if abort is not None:
        out = replace(out, abort_http_status=abort.get("http_status"), abort_grpc_status=abort.get("grpc_status"),
                      abort_per_million=_per_million(abort.get("percentage")))
    return out


def _compressor(c: Mapping[str, Any]) -> ir.Compressor:
    kind = c["type"].lower()
    options = c.get(kind, {})
    return ir.Compressor(
        kind=kind, level=options.get("quality" if kind == "brotli" else "compression_level"),
        min_length=size_bytes(c["min_content_length"]) if "min_content_length" in c else 30,
        content_types=tuple(c.get("content_types", ())))


def _global_rate_limit(g: Mapping[str, Any]) -> ir.GlobalRateLimit:
    return ir.GlobalRateLimit(
        rules=_rules(g["rules"]), mode=g.get("mode") or "Exact", fail_closed=bool(g.get("fail_closed")),
        timeout_s=duration_seconds(g["timeout"]) if "timeout" in g else 0.1)


def _local_rate_limit(local: Mapping[str, Any]) -> ir.LocalRateLimit:
    return ir.LocalRateLimit(_rules(local["rules"]))


def _rules(items: Any) -> tuple[ir.RateLimitRule, ...]:
    rules = []
    for rule in items:
        conditions: list[ir.RateLimitCondition] = []
        for selector in rule.get("client_selectors", ()):
            for h in selector.get("headers", ()):
                if h.get("type", "Exact") == "Distinct":
                    conditions.append(ir.RateLimitCondition("distinct_header", name=h["name"].lower()))
                else:
                    conditions.append(ir.RateLimitCondition(
                        "header", name=h["name"].lower(), value=h["value"], regex=h.get("type") == "RegularExpression",
                        invert=bool(h.get("invert"))))
            methods = selector.get("methods")
            if methods:
                conditions.append(ir.RateLimitCondition("method", value="|".join(m["value"] for m in methods),
                                                        invert=bool(methods[0].get("invert"))))
            source = selector.get("source_cidr")
            if source is not None:
                kind = "distinct_cidr" if source.get("type") == "Distinct" else "cidr"
                conditions.append(ir.RateLimitCondition(kind, value=source["value"]))
        limit = rule["limit"]
        rules.append(ir.RateLimitRule(tuple(conditions), limit["requests"], RATE_LIMIT_UNITS[limit["unit"]]))
    return tuple(rules)
