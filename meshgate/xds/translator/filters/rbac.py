"""`envoy.filters.http.rbac`: authorization rules (SecurityPolicy `authorization`).

The listener's filter has no policy of its own (it allows everything); each route with rules
carries them as per-route config, as an ordered matcher list: the first rule whose conditions
all hold decides (Allow or Deny), the default action when none does. A denied request gets 403
from Envoy. Claims and scopes are read from what `jwt_authn` verified (request metadata under
the provider's name), client addresses from the TCP peer (the edge trusts no X-Forwarded-For).
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter
"""

from __future__ import annotations

import ipaddress

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from envoy.extensions.matching.input_matchers.ip.v3 import ip_pb2
from envoy.extensions.matching.input_matchers.metadata.v3 import metadata_pb2
from envoy.type.matcher.v3 import http_inputs_pb2, string_pb2, value_pb2
from google.protobuf.message import Message
from xds.type.matcher.v3 import matcher_pb2

from meshgate import ir
from meshgate.xds.translator.filters.denials import add_json_denials
from meshgate.xds.translator.filters.jwt_authn import METADATA_NAMESPACE

NAME = "envoy.filters.http.rbac"
# Its 401/403 replies carry a JSON body (reason, request id): see denials.py.
patch_connection_manager = add_json_denials
Predicate = matcher_pb2.Matcher.MatcherList.Predicate


def listener_config(listener: ir.Listener) -> rbac_pb2.RBAC | None:
    for vhost in listener.virtual_hosts:
        for route in vhost.routes:
            if route.security is not None and route.security.authorization is not None:
                return rbac_pb2.RBAC()  # no rules here: each route brings its own
    return None


def route_config(route: ir.Route) -> rbac_pb2.RBACPerRoute | None:
    if route.security is None or route.security.authorization is None:
        return None
    authz = route.security.authorization
    out = rbac_pb2.RBACPerRoute()
    matcher = out.rbac.matcher
    for rule in authz.rules:
        field = matcher.matcher_list.matchers.add()
        field.predicate.CopyFrom(_all(_rule_predicates(rule)))
        _action(field.on_match, rule.name, rule.allow)
    _action(matcher.on_no_match, "default", authz.default_allow)
    return out


def _action(on_match: matcher_pb2.Matcher.OnMatch, name: str, allow: bool) -> None:
    action = rbac_config_pb2.Action(name=name, action=rbac_config_pb2.RBAC.ALLOW if allow else rbac_config_pb2.RBAC.DENY)
    on_match.action.name = name
    on_match.action.typed_config.Pack(action, deterministic=True)


def _rule_predicates(rule: ir.AuthzRule) -> list[Predicate]:
    p = rule.principal
    out = []
    if rule.methods:
        out.append(_any([_header(":method", m) for m in rule.methods]))
    if p.cidrs:
        out.append(_single("client_ip", network_inputs_pb2.SourceIPInput(), "ip", _ip_matcher(p.cidrs)))
    for name, values in p.headers:
        out.append(_any([_header(name, v) for v in values]))
    for claim, is_array, values in p.claims:
        path = [p.jwt_provider, *claim.split(".")]
        if is_array:
            out.append(_any([_metadata(path, _one_of(v)) for v in values]))
        else:
            out.append(_any([_metadata(path, value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=v)))
                             for v in values]))
    for scope in p.scopes:
        # jwt_authn keeps `scope` / `scp` as lists (normalize_payload_in_metadata).
        out.append(_any([_metadata([p.jwt_provider, claim], _one_of(scope)) for claim in ("scope", "scp")]))
    return out


def _one_of(value: str) -> value_pb2.ValueMatcher:
    out = value_pb2.ValueMatcher()
    out.list_match.one_of.string_match.exact = value
    return out


def _ip_matcher(cidrs: tuple[str, ...]) -> ip_pb2.Ip:
    out = ip_pb2.Ip(stat_prefix="client_ip")
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr)
        out.cidr_ranges.append(address_pb2.CidrRange(address_prefix=str(net.network_address)))
        out.cidr_ranges[-1].prefix_len.value = net.prefixlen
    return out


def _header(name: str, value: str) -> Predicate:
    pred = Predicate()
    single = pred.single_predicate
    single.input.name = "header"
    single.input.typed_config.Pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=name), deterministic=True)
    single.value_match.exact = value
    return pred


def _metadata(path: list[str], value: value_pb2.ValueMatcher) -> Predicate:
    source = network_inputs_pb2.DynamicMetadataInput(filter=METADATA_NAMESPACE)
    for key in path:
        source.path.add(key=key)
    return _single("jwt_claim", source, "metadata", metadata_pb2.Metadata(value=value))


def _single(input_name: str, source: Message, matcher_name: str, matcher: Message) -> Predicate:
    pred = Predicate()
    single = pred.single_predicate
    single.input.name = input_name
    single.input.typed_config.Pack(source, deterministic=True)
    single.custom_match.name = matcher_name
    single.custom_match.typed_config.Pack(matcher, deterministic=True)
    return pred


def _any(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    out = Predicate()
    out.or_matcher.predicate.extend(predicates)
    return out


def _all(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    out = Predicate()
    out.and_matcher.predicate.extend(predicates)
    return out
