"""BackendTrafficPolicy → IR: which policy applies to each route rule, merged along Gateway →
route → rule, and what it changes in the rule's IR routes and clusters.

Two levels, because Envoy has two places for these settings:

- **route level** (timeouts, retries, hash key; shaping: rate limits, see
  `meshgate.gatewayapi.shaping`): set on the rule's IR routes;
- **cluster level** (connect timeout, connection timeouts, circuit breakers, active and passive
  health checks, load balancing): a Backend's cluster is shared by every route that uses it, so a
  rule whose merged policy has cluster-level settings gets a **cluster variant**: a copy of the
  Backend's cluster named `backend/<ns>/<name>/policy-<hash of the settings>`, with the same
  endpoints. Rules whose settings are equal share one variant (and its circuit-breaker counters
  and health-check state); the Backend's own cluster stays for everything without a policy.

A route attached to several Gateways with different Gateway-level policies takes the first
Gateway's (by precedence); the other Gateway's policy is `Conflicted` for that route.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from meshgate import ir
from meshgate.api.backend_traffic_policy import IDEMPOTENT_METHODS, BackendTrafficPolicy
from meshgate.api.models import duration_seconds
from meshgate.gatewayapi.policies import Target, attach_policies, merged_spec
from meshgate.gatewayapi.shaping import route_shaping
from meshgate.gatewayapi.status import Condition, object_key

if TYPE_CHECKING:
    from meshgate.gatewayapi.translator import _Translator

# Envoy Gateway's retry triggers when a policy sets `retry` without `retryOn`.
DEFAULT_TRIGGERS = ("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes")
DEFAULT_RETRY_CODES = (503,)


class BackendTraffic:
    """The BackendTrafficPolicies of one translation: their status, and their effect on routes."""

    def __init__(self, t: _Translator) -> None:
        self.t = t
        self.winners = attach_policies(t, [p for p in t.policies if isinstance(p, BackendTrafficPolicy)])
        self.gateway_rank = {object_key(g): i for i, g in enumerate(t.gateways)}
        self.variants: dict[str, tuple[str, ir.ClusterSettings]] = {}  # name -> (Backend's cluster, settings)
        self._resolved: dict[tuple, tuple[dict[str, Any], ir.ClusterSettings | None]] = {}

    def apply(self, route: Any, matches: list, built: list, attachments: list) -> list:
        """`built` ((precedence key, IR route) per match) with the policies in force applied;
        the same objects where no policy applies."""
        if not self.winners:
            return built
        key = self.t.key_of[id(route)]
        gateway = self._gateway_target(route, attachments)
        out = []
        for (where, _), (precedence, ir_route) in zip(matches, built):
            rule_name = route.spec.rules[where[2]].name
            chain = tuple(c for c in (gateway, (key, None), (key, rule_name) if rule_name else None) if c)
            resolved = self._resolved.get(chain)
            if resolved is None:
                resolved = self._resolved[chain] = self._resolve(merged_spec(self.winners, list(chain)))
            out.append((precedence, self._apply(ir_route, *resolved)))
        return out

    def clusters(self, bases: tuple[ir.Cluster, ...]) -> tuple[ir.Cluster, ...]:
        """The cluster variants the routes use, each a copy of its Backend's cluster as built
        (endpoints, protocol, upstream TLS) with the policy's settings."""
        by_name = {c.name: c for c in bases}
        out = []
        for name in sorted(self.variants):
            base_name, settings = self.variants[name]
            base = by_name.get(base_name)
            if base is None:  # the Backend's own cluster was left out (its errors say why)
                continue
            out.append(replace(
                base, name=name, settings=settings, backend=base_name, lb=settings.lb or base.lb,
                connect_timeout_s=base.connect_timeout_s if settings.connect_timeout_s is None else settings.connect_timeout_s))
        return tuple(out)

    # -- internals ---------------------------------------------------------------------------

    def _gateway_target(self, route: Any, attachments: list) -> Target | None:
        gateways = sorted({a[0] for a in attachments}, key=lambda g: self.gateway_rank.get(g, 1 << 30))
        with_policy = [(g, None) for g in gateways if (g, None) in self.winners]
        for other in with_policy[1:]:
            policy, first = self.winners[other], self.winners[with_policy[0]]
            if policy is not first:
                self.t.status.condition(policy, Condition(
                    "Accepted", "False", "Conflicted",
                    f"{route.ref} is also attached to Gateway {with_policy[0][0][2]}/{with_policy[0][0][3]}, whose "
                    f"policy {first.ref} applies to it (an IR route takes one Gateway's policy)"), ("spec", "targetRefs"))
        return with_policy[0] if with_policy else None

    def _resolve(self, spec: Mapping[str, Any]) -> tuple[dict[str, Any], ir.ClusterSettings | None]:
        """A merged spec (snake_case dict) → (changes to the IR route, cluster settings or None)."""
        timeout, retry = spec.get("timeout", {}), spec.get("retry")
        http = timeout.get("http", {})
        lb = spec.get("load_balancer", {})
        route: dict[str, Any] = {}
        if "request_timeout" in http:
            route["timeout_s"] = duration_seconds(http["request_timeout"])
        if "max_stream_duration" in http:  # route level: also bounds an upgraded (WebSocket) stream
            route["max_stream_duration_s"] = duration_seconds(http["max_stream_duration"])
        if retry is not None:
            per_retry = retry.get("per_retry", {})
            back_off = per_retry.get("back_off", {})
            retry_on = retry.get("retry_on")
            triggers = tuple(retry_on.get("triggers", ())) if retry_on is not None else DEFAULT_TRIGGERS
            codes = tuple(retry_on.get("http_status_codes", ())) if retry_on is not None else DEFAULT_RETRY_CODES
            route["retry"] = ir.RetryPolicy(
                num_retries=retry.get("num_retries", 2), triggers=triggers, status_codes=codes,
                backoff_base_s=duration_seconds(back_off["base_interval"]) if "base_interval" in back_off else None,
                backoff_max_s=duration_seconds(back_off["max_interval"]) if "max_interval" in back_off else None,
                methods=tuple(retry.get("methods", IDEMPOTENT_METHODS)))
            if "timeout" in per_retry:
                route["per_try_timeout_s"] = duration_seconds(per_retry["timeout"])
        consistent = lb.get("consistent_hash")
        if consistent is not None:
            route["hash_policy"] = _hash_policy(consistent)
        shaping = route_shaping(spec)  # rate limits: per-route HTTP filter config
        if shaping is not None:
            route["shaping"] = shaping
        return route, _cluster_settings(spec)

    def _apply(self, route: ir.Route, changes: dict[str, Any], settings: ir.ClusterSettings | None) -> ir.Route:
        if not changes and settings is None:
            return route
        changes = dict(changes)
        # The rule's own Gateway API timeouts are the more specific setting: they win.
        if route.timeout_s is not None:
            changes.pop("timeout_s", None)
        if route.per_try_timeout_s is not None:
            changes.pop("per_try_timeout_s", None)
        if route.grpc and "retry" in changes:
            changes["retry"] = replace(changes["retry"], methods=())  # every gRPC call is a POST
        if settings is not None:
            changes["destinations"] = tuple(
                replace(d, cluster=self._variant(d.cluster, settings)) if d.cluster else d for d in route.destinations)
        return replace(route, **changes)

    def _variant(self, base_name: str, settings: ir.ClusterSettings) -> str:
        # A stable name from the settings alone: equal settings share a cluster across reloads.
        digest = hashlib.sha256(repr(settings).encode()).hexdigest()[:10]
        name = f"{base_name}/policy-{digest}"
        self.variants.setdefault(name, (base_name, settings))
        return name


def _hash_policy(consistent: Mapping[str, Any]) -> ir.HashPolicy:
    kind = consistent["type"]
    if kind == "Header":
        return ir.HashPolicy(header=consistent["header"]["name"].lower())
    if kind == "Cookie":
        cookie = consistent["cookie"]
        return ir.HashPolicy(cookie=cookie["name"],
                             cookie_ttl_s=duration_seconds(cookie["ttl"]) if "ttl" in cookie else None)
    if kind == "QueryParams":
        return ir.HashPolicy(query_param=consistent["query_params"][0]["name"])
    return ir.HashPolicy(source_ip=True)


def _cluster_settings(spec: Mapping[str, Any]) -> ir.ClusterSettings | None:
    """The cluster-level part of a merged spec, every value resolved (Envoy Gateway's defaults),
    or None when the spec has none (the rule keeps the Backend's own cluster)."""
    timeout = spec.get("timeout", {})
    tcp, http = timeout.get("tcp", {}), timeout.get("http", {})
    breaker, health, lb = spec.get("circuit_breaker"), spec.get("health_check", {}), spec.get("load_balancer")
    changes: dict[str, Any] = {}
    if "connect_timeout" in tcp:
        changes["connect_timeout_s"] = duration_seconds(tcp["connect_timeout"])
    if "connection_idle_timeout" in http:
        changes["idle_timeout_s"] = duration_seconds(http["connection_idle_timeout"])
    if "max_connection_duration" in http:
        changes["max_connection_duration_s"] = duration_seconds(http["max_connection_duration"])
    if breaker is not None:
        budget = breaker.get("retry_budget")
        changes["circuit_breakers"] = ir.CircuitBreakers(
            max_connections=breaker.get("max_connections", 1024),
            max_pending_requests=breaker.get("max_pending_requests", 1024),
            max_requests=breaker.get("max_parallel_requests", 1024),
            max_retries=breaker.get("max_parallel_retries", 1024),
            retry_budget_percent=budget["percent"] if budget else None,
            retry_budget_min_concurrency=budget["min_retry_concurrency"] if budget else None)
        if "max_requests_per_connection" in breaker:
            changes["max_requests_per_connection"] = breaker["max_requests_per_connection"]
    active, passive = health.get("active"), health.get("passive")
    if active is not None:
        http_check, grpc_check = active.get("http", {}), active.get("grpc", {})
        changes["health_check"] = ir.ActiveHealthCheck(
            kind=active["type"],
            interval_s=duration_seconds(active.get("interval", "3s")),
            timeout_s=duration_seconds(active.get("timeout", "1s")),
            healthy_threshold=active.get("healthy_threshold", 1),
            unhealthy_threshold=active.get("unhealthy_threshold", 3),
            http_path=http_check.get("path"), http_host=http_check.get("hostname"),
            http_method=http_check.get("method"),
            expected_statuses=tuple(http_check.get("expected_statuses", ())),
            grpc_service=grpc_check.get("service"))
    if passive is not None:
        changes["outlier"] = ir.OutlierDetection(
            consecutive_5xx=passive.get("consecutive_5xx_errors", 5),
            consecutive_gateway_errors=passive.get("consecutive_gateway_errors", 0),
            consecutive_local_origin_failures=passive.get("consecutive_local_origin_failures", 5),
            split_external_local_origin_errors=passive.get("split_external_local_origin_errors", False),
            interval_s=duration_seconds(passive.get("interval", "3s")),
            base_ejection_time_s=duration_seconds(passive.get("base_ejection_time", "30s")),
            max_ejection_percent=passive.get("max_ejection_percent", 10))
    if "panic_threshold" in health:
        changes["panic_threshold_percent"] = health["panic_threshold"]
    if lb is not None:
        # Envoy Gateway's ConsistentHash is Maglev (a fixed-size lookup table, even spread).
        changes["lb"] = "Maglev" if lb["type"] == "ConsistentHash" else lb["type"]
        if "slow_start" in lb:
            changes["slow_start_window_s"] = duration_seconds(lb["slow_start"]["window"])
    return ir.ClusterSettings(**changes) if changes else None
