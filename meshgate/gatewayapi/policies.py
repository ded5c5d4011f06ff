"""Policy attachment: which policy applies where, and how policies on nested targets merge.

A policy names its targets with `targetRefs` (group, kind, name, optional `sectionName`), in its
own namespace, as in Gateway API's policy attachment (GEP-713) and Envoy Gateway:

- A target that does not exist: the policy is `Accepted=False`, reason `TargetNotFound`.
- Two policies of one kind on the same target: the older wins (then the alphabetically first);
  the other is `Accepted=False`, reason `Conflicted`, for that target.
- **Merge rule.** A more specific target wins over a less specific one, *field by field*: a
  policy on a listener (`sectionName`) overrides the fields it sets of the policy on its Gateway,
  and inherits the others; nested settings merge the same way, a list or a single value is
  replaced whole. What no policy sets takes meshgate's default. Route-level kinds follow the same
  rule along Gateway → listener → route → rule (`merged_spec` takes the chain).

Targets a policy may name (`resolve_target`): a Gateway (`sectionName`: a listener), an HTTPRoute
or GRPCRoute (`sectionName`: a named rule), a meshgate Backend. Each kind restricts this further in
its schema (a ClientTrafficPolicy targets Gateways only).

`merge_specs` is that rule, golden-tested in tests/golden/translate/client-traffic-policy-*.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from meshgate.api.models import Gateway, Listener, Resource, duration_seconds
from meshgate.api.policies import GATEWAY_GROUP, ClientTrafficPolicy, size_bytes
from meshgate.gatewayapi.status import Condition, ObjectKey, object_key
from meshgate.ir import ClientSettings

if TYPE_CHECKING:
    from meshgate.gatewayapi.translator import _Translator


def merge_specs(general: Mapping[str, Any], specific: Mapping[str, Any]) -> dict[str, Any]:
    """Field-by-field merge: `specific` wins; mappings merge recursively; anything else is replaced."""
    out = dict(general)
    for key, value in specific.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_specs(out[key], value)
        else:
            out[key] = value
    return out


# A policy target: (the target object's key, sectionName or None).
Target = tuple[ObjectKey, "str | None"]

# What a targetRef may name: (group, kind) -> what its sectionName selects.
TARGET_KINDS: dict[tuple[str, str], str] = {
    (GATEWAY_GROUP, "Gateway"): "listener",
    (GATEWAY_GROUP, "HTTPRoute"): "rule",
    (GATEWAY_GROUP, "GRPCRoute"): "rule",
    ("meshgate.io", "HTTPRoute"): "rule",
    ("meshgate.io", "Backend"): "",
}


def resolve_target(t: _Translator, namespace: str, ref: Any) -> tuple[Target | None, str, str]:
    """The object (and section) a targetRef names in `namespace`, or (None, field, why not)."""
    section_kind = TARGET_KINDS.get((ref.group, ref.kind))
    if section_kind is None:
        return None, "kind", f"{ref.group}/{ref.kind} can't be a policy target"
    if ref.kind == "Gateway":
        target = next((g for g in t.gateways if (g.metadata.namespace, g.metadata.name) == (namespace, ref.name)), None)
        sections = [l.name for l in target.spec.listeners] if target is not None else []
    elif ref.kind == "Backend":
        target, sections = t.backends.get((namespace, ref.name)), []
    else:
        version = "gateway.networking.k8s.io/v1" if ref.group == GATEWAY_GROUP else "meshgate.io/v1alpha1"
        target = next((r for r in t.routes if r.kind == ref.kind and r.api_version == version
                       and (r.metadata.namespace, r.metadata.name) == (namespace, ref.name)), None)
        sections = [rule.name for rule in target.spec.rules if rule.name] if target is not None else []
    if target is None:
        return None, "name", t._missing(ref.group, ref.kind, namespace, ref.name)
    if ref.section_name is not None:
        if not section_kind:
            return None, "sectionName", f"a {ref.kind} has no sections"
        if ref.section_name not in sections:
            return None, "sectionName", f"{target.ref} has no {section_kind} named {ref.section_name!r}"
    return (t.key_of.get(id(target)) or object_key(target), ref.section_name), "", ""


def attach_policies(t: _Translator, policies: list[Resource]) -> dict[Target, Resource]:
    """The policy that applies at each target, for policies of one kind; each policy's status
    (`TargetNotFound`, `Conflicted`: the older policy keeps the target)."""
    from meshgate.gatewayapi.translator import precedence_order

    winners: dict[Target, Resource] = {}
    for policy in precedence_order(policies):
        accepted_any = False
        for i, ref in enumerate(policy.spec.target_refs):
            where = ("spec", "targetRefs", i)
            target, field, problem = resolve_target(t, policy.metadata.namespace, ref)
            if target is None:
                t.status.condition(policy, Condition("Accepted", "False", "TargetNotFound", problem), (*where, field))
                continue
            holder = winners.setdefault(target, policy)
            if holder is not policy:
                what = f"{ref.kind} {policy.metadata.namespace}/{ref.name}" + (
                    f" section {ref.section_name}" if ref.section_name else "")
                t.status.condition(policy, Condition("Accepted", "False", "Conflicted",
                                                     f"{holder.ref} already applies to {what} (the older policy wins)"), where)
                continue
            accepted_any = True
        if accepted_any and all(c.status == "True" for c in t.status.of(policy).conditions if c.type == "Accepted"):
            t.status.condition(policy, Condition("Accepted", "True", "Accepted"))
    return winners


def merged_spec(winners: Mapping[Target, Resource], chain: list[Target]) -> dict[str, Any]:
    """The spec in force at the end of `chain` (targets from least to most specific, e.g. Gateway,
    listener; or Gateway, route, rule): each more specific policy overrides field by field."""
    spec: dict[str, Any] = {}
    for target in chain:
        policy = winners.get(target)
        if policy is not None:
            spec = merge_specs(spec, policy.spec.model_dump(exclude_none=True, exclude={"target_refs"}))
    return spec


def client_settings(t: _Translator, programmed: list[tuple[Gateway, Listener]]) -> dict[tuple[ObjectKey, str], ClientSettings]:
    """Effective ClientSettings of every programmed listener, and each ClientTrafficPolicy's status."""
    winners = attach_policies(t, [p for p in t.policies if isinstance(p, ClientTrafficPolicy)])
    out: dict[tuple[ObjectKey, str], ClientSettings] = {}
    for gateway, listener in programmed:
        key = object_key(gateway)
        out[(key, listener.name)] = settings_from_spec(merged_spec(winners, [(key, None), (key, listener.name)]))
    _check_shared_ports(t, programmed, out, winners)
    return out


def _check_shared_ports(t: _Translator, programmed, settings, winners) -> None:  # noqa: ANN001
    """Gateway listeners on one port share one Envoy listener, so they must agree on settings.
    The first listener's (by Gateway precedence) apply; a policy that would differ is reported."""
    first: dict[int, tuple[Gateway, Listener]] = {}
    for gateway, listener in programmed:
        owner = first.setdefault(listener.port, (gateway, listener))
        if owner == (gateway, listener):
            continue
        mine, theirs = settings[(object_key(gateway), listener.name)], settings[(object_key(owner[0]), owner[1].name)]
        if mine != theirs:
            settings[(object_key(gateway), listener.name)] = theirs
            for section in (None, listener.name):
                policy = winners.get((object_key(gateway), section))
                if policy is not None:
                    t.status.condition(policy, Condition(
                        "Accepted", "False", "Conflicted",
                        f"{gateway.ref} listener {listener.name} shares port {listener.port} with {owner[0].ref} listener "
                        f"{owner[1].name}, whose client settings differ; listeners on one port must agree"),
                        ("spec", "targetRefs"))


def settings_from_spec(spec: Mapping[str, Any]) -> ClientSettings:
    """A merged ClientTrafficPolicy spec (snake_case dict) → ClientSettings over the defaults."""
    s = ClientSettings()
    path, headers = spec.get("path", {}), spec.get("headers", {})
    http = spec.get("timeout", {}).get("http", {})
    connection, http2 = spec.get("connection", {}), spec.get("http2", {})
    changes: dict[str, Any] = {}
    if "disable_merge_slashes" in path:
        changes["merge_slashes"] = not path["disable_merge_slashes"]
    if "escaped_slashes_action" in path:
        changes["escaped_slashes"] = path["escaped_slashes_action"]
    if "with_underscores_action" in headers:
        changes["headers_with_underscores"] = headers["with_underscores_action"]
    if "enable_envoy_headers" in headers:
        changes["enable_envoy_headers"] = headers["enable_envoy_headers"]
    for field, attr in (("request_headers_timeout", "request_headers_timeout_s"),
                        ("request_received_timeout", "request_received_timeout_s"),
                        ("idle_timeout", "idle_timeout_s"), ("stream_idle_timeout", "stream_idle_timeout_s")):
        if field in http:
            changes[attr] = duration_seconds(http[field])
    if "connection_limit" in connection:
        limit = connection["connection_limit"]
        changes["connection_limit"] = limit["value"]
        if limit.get("close_delay"):
            changes["connection_limit_close_delay_s"] = duration_seconds(limit["close_delay"])
    if "buffer_limit" in connection:
        changes["buffer_limit_bytes"] = size_bytes(connection["buffer_limit"])
    if "max_concurrent_streams" in http2:
        changes["http2_max_concurrent_streams"] = http2["max_concurrent_streams"]
    if "initial_stream_window_size" in http2:
        changes["http2_initial_stream_window_bytes"] = size_bytes(http2["initial_stream_window_size"])
    if "initial_connection_window_size" in http2:
        changes["http2_initial_connection_window_bytes"] = size_bytes(http2["initial_connection_window_size"])
    if "health_check" in spec:
        changes["health_check_path"] = spec["health_check"]["path"]
    return replace(s, **changes)
