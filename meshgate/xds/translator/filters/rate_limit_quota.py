"""`envoy.filters.http.rate_limit_quota` (RLQS): global rate limits as budgets (BackendTrafficPolicy
`rateLimit.global` with `mode: Budget`): Envoy enforces a share of each limit on its own, in a
token bucket, with no call per request; the edge companion's quota server
(`envoy.service.rate_limit_quota.v3.RateLimitQuotaService/StreamRateLimitQuotas`,
meshgate.edge.quota) hands out the shares from the usage each Envoy reports every second.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rate_limit_quota_filter
Envoy marks this filter work-in-progress; docs/traffic.md has what tests measured of it.

Envoy 1.40's filter takes no per-route config at all (its NACK: "doesn't support virtual host or
route specific configurations"), sees only request headers in its matchers, and puts each
request in one bucket at most. So:

- a `header_mutation` instance before it marks each request with its route:
  `x-meshgate-quota-route: <route name>` on the routes with budgets (per-route config), the
  header removed on every other route (filter level, so that a client can't send it to spend
  another route's budget);
- one RLQS instance per rule (`envoy.filters.http.rate_limit_quota/<rule id>`), in every chain,
  whose matcher takes the requests marked with the rule's route (and its Exact header matches),
  so that a request is counted by every rule of its route. The bucket id is
`{"rule": <rule id>}` plus, for each Distinct header, `{"rule-<j>": <the header's value>}` (each
value its own bucket); a rule's Exact header matches are the matcher's predicate. A request
without a Distinct header, or that fails a match, is not counted by that rule.

Before a bucket's first assignment arrives (and while the quota server is unreachable) Envoy
applies `no_assignment_behavior`: ALLOW_ALL by default, DENY_ALL with `failClosed` (then the
first request of each new bucket is refused too). An assignment lives 5 s
(meshgate.edge.quota.ASSIGNMENT_TTL_S) unless renewed; then the same blanket rule applies.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2, extension_pb2, grpc_service_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2 as hm_pb2
from google.protobuf.message import Message
from envoy.extensions.filters.http.rate_limit_quota.v3 import rate_limit_quota_pb2 as rlq_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from envoy.type.v3 import http_status_pb2, ratelimit_strategy_pb2
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2, string_pb2 as xds_string_pb2

from meshgate import ir
from meshgate.gatewayapi.security import EDGE_COMPANION_CLUSTER
from meshgate.ir import shaping
from meshgate.xds.translator.filters.ratelimit import DOMAIN, RULE_KEY, limits, rule_id

NAME = "envoy.filters.http.rate_limit_quota"
MARK_FILTER = "envoy.filters.http.header_mutation/meshgate-quota-route"
ROUTE_HEADER = "x-meshgate-quota-route"
REPORTING_INTERVAL_S = 1  # how often each Envoy reports its usage (and so how fast shares follow load)
_Strategy = ratelimit_strategy_pb2.RateLimitStrategy


def _instance(route: ir.Route, index: int) -> str:
    return f"{NAME}/{rule_id(route, index)}"


def listener_filters(listener: ir.Listener) -> list[tuple[str, Message]]:
    out: dict[str, Message] = {}
    for vhost in listener.virtual_hosts:
        for route in vhost.routes:
            g = limits(route, "Budget")
            if g is None:
                continue
            for i, rule in enumerate(g.rules):
                out.setdefault(_instance(route, i), _config(route, i, rule, g))
    if not out:
        return []
    # Filter level: the mark removed; a route with budgets sets it (its mutations last: they win).
    clear = hm_pb2.HeaderMutation(most_specific_header_mutations_wins=True)
    clear.mutations.request_mutations.add().remove = ROUTE_HEADER
    return [(MARK_FILTER, clear), *sorted(out.items())]


def route_filters(route: ir.Route) -> list[tuple[str, hm_pb2.HeaderMutationPerRoute]]:
    if limits(route, "Budget") is None:
        return []
    mark = hm_pb2.HeaderMutationPerRoute()
    mark.mutations.request_mutations.add().append.CopyFrom(base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=ROUTE_HEADER, value=route.name),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    return [(MARK_FILTER, mark)]


def _config(route: ir.Route, index: int, rule: shaping.RateLimitRule,
            g: shaping.GlobalRateLimit) -> rlq_pb2.RateLimitQuotaFilterConfig:
    settings = rlq_pb2.RateLimitQuotaBucketSettings()
    builder = settings.bucket_id_builder.bucket_id_builder
    builder[RULE_KEY].string_value = rule_id(route, index)
    exact = [shaping.RateLimitCondition("header", name=ROUTE_HEADER, value=route.name)]
    for j, c in enumerate(rule.conditions):
        if c.kind == "distinct_header":
            value = builder[f"{RULE_KEY}-{j}"].custom_value
            value.name = c.name
            value.typed_config.Pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=c.name))
        else:  # the model allows Exact headers only besides Distinct ones in this mode
            exact.append(c)
    settings.reporting_interval.FromSeconds(REPORTING_INTERVAL_S)
    blanket = _Strategy.DENY_ALL if g.fail_closed else _Strategy.ALLOW_ALL
    settings.no_assignment_behavior.fallback_rate_limit.blanket_rule = blanket
    settings.expired_assignment_behavior.fallback_rate_limit.blanket_rule = blanket
    deny = settings.deny_response_settings
    deny.http_status.CopyFrom(http_status_pb2.HttpStatus(code=http_status_pb2.TooManyRequests))
    # A token bucket refills continuously: another request fits within the second.
    deny.response_headers_to_add.add(header=base_pb2.HeaderValue(key="retry-after", value="1"))

    action = xds_extension_pb2.TypedExtensionConfig(name="rate_limit_quota_bucket")
    action.typed_config.Pack(settings)
    matcher = matcher_pb2.Matcher()  # no on_no_match: a request of another route is in no bucket
    entry = matcher.matcher_list.matchers.add()
    predicates = [_header_predicate(c) for c in exact]
    if len(predicates) == 1:
        entry.predicate.CopyFrom(predicates[0])
    else:
        entry.predicate.and_matcher.predicate.extend(predicates)
    entry.on_match.action.CopyFrom(action)

    service = grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
        cluster_name=EDGE_COMPANION_CLUSTER))
    return rlq_pb2.RateLimitQuotaFilterConfig(rlqs_server=service, domain=DOMAIN, bucket_matchers=matcher)


def _header_predicate(c: shaping.RateLimitCondition) -> matcher_pb2.Matcher.MatcherList.Predicate:
    predicate = matcher_pb2.Matcher.MatcherList.Predicate()
    single = predicate.single_predicate
    single.input.name = c.name
    single.input.typed_config.Pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=c.name))
    single.value_match.CopyFrom(xds_string_pb2.StringMatcher(exact=c.value))
    return predicate


_ = extension_pb2
