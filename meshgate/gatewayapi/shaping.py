"""BackendTrafficPolicy shaping fields → IR (`meshgate.ir.shaping`), from the merged spec of a
route rule (merging along Gateway → route → rule is `meshgate.gatewayapi.backend_policy`'s: a
more specific policy's `rateLimit` replaces the general one's rules as a whole)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshgate.api.backend_traffic_shaping import RATE_LIMIT_UNITS
from meshgate.ir import shaping as ir


def route_shaping(spec: Mapping[str, Any]) -> ir.Shaping | None:
    """The shaping part of a merged spec (snake_case dict), or None when it has none."""
    rate_limit = spec.get("rate_limit")
    local = _local_rate_limit(rate_limit["local"]) if rate_limit else None
    if local is None:
        return None
    return ir.Shaping(local_rate_limit=local)


def _local_rate_limit(local: Mapping[str, Any]) -> ir.LocalRateLimit:
    rules = []
    for rule in local["rules"]:
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
    return ir.LocalRateLimit(tuple(rules))
