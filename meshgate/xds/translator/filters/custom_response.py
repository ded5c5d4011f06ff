"""`envoy.filters.http.custom_response`: custom error pages (BackendTrafficPolicy
`responseOverride`). A response whose status matches, from the upstream or from Envoy itself
(a 503 with no healthy upstream, a 429 of a rate limit...), is replaced by the configured body,
content type and status.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/custom_response_filter

The listener's filter replaces nothing; each route with overrides carries its own as per-route
config: a matcher list over the response status (first match wins). Chain position: right after
the compressor. Responses pass the filters in reverse order, so the replaced body is compressed
like any other, and every filter after it (auth, rate limits, faults) has its replies replaced.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.custom_response.v3 import custom_response_pb2
from envoy.extensions.http.custom_response.local_response_policy.v3 import local_response_policy_pb2
from envoy.type.matcher.v3 import status_code_input_pb2
from xds.type.matcher.v3 import matcher_pb2

from meshgate import ir

NAME = "envoy.filters.http.custom_response"
Predicate = matcher_pb2.Matcher.MatcherList.Predicate


def _overrides(route: ir.Route) -> tuple:
    return route.shaping.response_overrides if route.shaping is not None else ()


def listener_config(listener: ir.Listener) -> custom_response_pb2.CustomResponse | None:
    if any(_overrides(r) for v in listener.virtual_hosts for r in v.routes):
        return custom_response_pb2.CustomResponse()  # nothing here: routes bring theirs
    return None


def route_config(route: ir.Route) -> custom_response_pb2.CustomResponse | None:
    overrides = _overrides(route)
    if not overrides:
        return None
    out = custom_response_pb2.CustomResponse()
    for i, override in enumerate(overrides):
        field = out.custom_response_matcher.matcher_list.matchers.add()
        field.predicate.CopyFrom(_any([_status(first, last) for first, last in override.codes]))
        policy = local_response_policy_pb2.LocalResponsePolicy()
        if override.body is not None:
            policy.body.inline_string = override.body
        if override.status is not None:
            policy.status_code.value = override.status
        if override.content_type is not None:
            policy.response_headers_to_add.add(
                header=base_pb2.HeaderValue(key="content-type", value=override.content_type),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
        field.on_match.action.name = f"override-{i}"
        field.on_match.action.typed_config.Pack(policy, deterministic=True)
    return out


def _status(first: int, last: int) -> Predicate:
    """Status codes first..last: whole hundreds as classes ("5xx"), the rest one by one."""
    parts = []
    code = first
    while code <= last:
        if code % 100 == 0 and code + 99 <= last:
            parts.append(_single(status_code_input_pb2.HttpResponseStatusCodeClassMatchInput(), f"{code // 100}xx"))
            code += 100
        else:
            parts.append(_single(status_code_input_pb2.HttpResponseStatusCodeMatchInput(), str(code)))
            code += 1
    return _any(parts)


def _single(source, value: str) -> Predicate:  # noqa: ANN001
    pred = Predicate()
    pred.single_predicate.input.name = "status"
    pred.single_predicate.input.typed_config.Pack(source, deterministic=True)
    pred.single_predicate.value_match.exact = value
    return pred


def _any(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    out = Predicate()
    out.or_matcher.predicate.extend(predicates)
    return out
