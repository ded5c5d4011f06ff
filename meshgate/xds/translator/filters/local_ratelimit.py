"""`envoy.filters.http.local_ratelimit`: per-proxy rate limits (BackendTrafficPolicy `rateLimit`
with `type: Local`), counted by Envoy in token buckets, no Python and no service on the path.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/local_rate_limit_filter

The listener's filter has no bucket of its own, so it limits nothing; each limited route carries
its whole config as per-route config (the same message), like Envoy Gateway's:

- a rule without client selectors is the route's default `token_bucket`; when there is none, the
  default bucket is effectively unlimited (Envoy needs one even when descriptors carry the limits);
- every rule with selectors is a *descriptor*: the route's `rate_limits` actions build a list of
  (key, value) entries from the request (a header's value, whether a header matches, the client
  address masked to the CIDR's prefix, the client address), and the request is counted in the
  descriptor whose entries equal them. An entry without a value matches any value, each value
  getting its own bucket ("Distinct": per header value, per client IP), at most
  `MAX_DYNAMIC_DESCRIPTORS` of them (least recently used dropped first). A request for which an
  action yields nothing (the header is missing, a match fails) is not counted by that rule;
- a request over any of its buckets gets 429 `local_rate_limited` with `x-envoy-ratelimited`,
  the draft-03 `x-ratelimit-limit` / `-remaining` / `-reset` headers (on every response of the
  route, 200s too) and `retry-after` (seconds until the bucket that refused it has a token).

Buckets refill on a timer: `requests` tokens every unit, all at once, so a burst that straddles
a refill can pass up to twice the limit. Counts are per Envoy process, shared by its workers.
"""

from __future__ import annotations

import ipaddress

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as lrl_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from google.protobuf import duration_pb2

from meshgate import ir
from meshgate.ir import shaping

NAME = "envoy.filters.http.local_ratelimit"
STAT_PREFIX = "local_rate_limit"  # stats: http.<listener>.local_rate_limit.rate_limited, ...
MAX_DYNAMIC_DESCRIPTORS = 10_000  # buckets per distinct values, per route (Envoy Gateway's number)
_UNLIMITED = 4_294_967_295
# `enable_retry_after_header` (Envoy 1.40): `retry-after: <seconds>` on the 429s this filter sends.
# xds-protos 1.85 predates it, so it is set by its field number, appended to the serialized
# message (protobuf keeps unknown fields; Envoy reads it as the bool field 19). Golden files don't
# show it (they are rendered from xds-protos' descriptors); tests/test_e2e_shaping.py checks it.
_RETRY_AFTER_FIELD = b"\x98\x01\x01"  # key of field 19 as a varint (19 << 3 = 152), then true


def _limited(route: ir.Route) -> shaping.LocalRateLimit | None:
    return route.shaping.local_rate_limit if route.shaping is not None else None


def listener_config(listener: ir.Listener) -> lrl_pb2.LocalRateLimit | None:
    if any(_limited(route) for vhost in listener.virtual_hosts for route in vhost.routes):
        return lrl_pb2.LocalRateLimit(stat_prefix=STAT_PREFIX)  # no bucket: routes bring theirs
    return None


def route_config(route: ir.Route) -> lrl_pb2.LocalRateLimit | None:
    limit = _limited(route)
    if limit is None:
        return None
    out = lrl_pb2.LocalRateLimit(stat_prefix=STAT_PREFIX)
    default = next((r for r in limit.rules if not r.conditions), None)
    out.token_bucket.CopyFrom(_bucket(default.requests, default.interval_s) if default else _bucket(_UNLIMITED, 1))
    # Enabled and enforced for every request (Envoy's defaults are 0%: neither).
    out.filter_enabled.default_value.CopyFrom(percent_pb2.FractionalPercent(numerator=100))
    out.filter_enforced.default_value.CopyFrom(percent_pb2.FractionalPercent(numerator=100))
    out.enable_x_ratelimit_headers = ratelimit_pb2.DRAFT_VERSION_03
    # A request a rule counts is not also counted by the default bucket (which only takes the rest).
    out.always_consume_default_token_bucket.value = False
    if route.grpc:
        out.rate_limited_as_resource_exhausted = True  # gRPC clients see RESOURCE_EXHAUSTED, not UNAVAILABLE
    distinct = False
    for i, rule in enumerate(limit.rules):
        if not rule.conditions:
            continue
        actions = out.rate_limits.add()
        descriptor = out.descriptors.add(token_bucket=_bucket(rule.requests, rule.interval_s))
        # First entry: the rule's number, so that two rules with the same conditions keep
        # separate buckets (Envoy refuses two descriptors with equal entries).
        actions.actions.add().generic_key.CopyFrom(
            rc.RateLimit.Action.GenericKey(descriptor_key="rule", descriptor_value=str(i)))
        descriptor.entries.add(key="rule", value=str(i))
        for j, condition in enumerate(rule.conditions):
            distinct |= condition.kind.startswith("distinct_")
            _condition(actions, descriptor, f"rule-{i}-{j}", condition)
    if distinct:
        out.max_dynamic_descriptors.value = MAX_DYNAMIC_DESCRIPTORS
    # Re-parsed so that the extra field is part of the message that gets packed.
    return lrl_pb2.LocalRateLimit.FromString(out.SerializeToString(deterministic=True) + _RETRY_AFTER_FIELD)


def _bucket(requests: int, interval_s: int) -> token_bucket_pb2.TokenBucket:
    # Holds `requests` tokens, refilled to the brim every interval.
    out = token_bucket_pb2.TokenBucket(max_tokens=requests, fill_interval=duration_pb2.Duration(seconds=interval_s))
    out.tokens_per_fill.value = requests
    return out


def _condition(actions: rc.RateLimit, descriptor, key: str, c: shaping.RateLimitCondition) -> None:  # noqa: ANN001
    """One action (what the request yields) and the descriptor entry it must equal."""
    if c.kind == "distinct_header":
        # The header's value itself; the entry has no value: one bucket per value.
        actions.actions.add().request_headers.CopyFrom(
            rc.RateLimit.Action.RequestHeaders(header_name=c.name, descriptor_key=key))
        descriptor.entries.add(key=key)
    elif c.kind in ("header", "method"):
        # A fixed entry when the header matches (or, inverted, when it doesn't).
        name = ":method" if c.kind == "method" else c.name
        if c.kind == "method":
            match = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=f"^({c.value})$"))
        elif c.regex:
            match = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=c.value))
        else:
            match = string_pb2.StringMatcher(exact=c.value)
        action = actions.actions.add().header_value_match
        action.descriptor_key, action.descriptor_value = key, "match"
        action.expect_match.value = not c.invert
        action.headers.add(name=name, string_match=match)
        descriptor.entries.add(key=key, value="match")
    else:  # cidr, distinct_cidr
        # The client address masked to the range's prefix ("10.1.2.3" -> "10.0.0.0/8"): equal to
        # the range only for clients inside it.
        net = ipaddress.ip_network(c.value)
        masked = actions.actions.add().masked_remote_address
        if net.version == 4:
            masked.v4_prefix_mask_len.value = net.prefixlen
        else:
            masked.v6_prefix_mask_len.value = net.prefixlen
        descriptor.entries.add(key="masked_remote_address", value=str(net))
        if c.kind == "distinct_cidr":
            # ... and the client address itself, without a value: one bucket per client.
            actions.actions.add().remote_address.SetInParent()
            descriptor.entries.add(key="remote_address")
