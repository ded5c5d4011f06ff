"""Policy attachment: which policy applies where, and how policies on nested targets merge.

A policy names its targets with `targetRefs` (group, kind, name, optional `sectionName`), in its
own namespace, as in Gateway API's policy attachment (GEP-713) and Envoy Gateway:

- A target that does not exist: the policy is `Accepted=False`, reason `TargetNotFound`.
- Two policies of one kind on the same target: the older wins (then the alphabetically first);
  the other is `Accepted=False`, reason `Conflicted`, for that target.
- **Merge rule.** A more specific target wins over a less specific one, *field by field*: a
  policy on a listener (`sectionName`) overrides the fields it sets of the policy on its Gateway,
  and inherits the others; nested settings merge the same way, a list or a single value is
  replaced whole. What no policy sets takes meshgate's default. (Routes and rules over Gateways,
  for route-level kinds, follow the same rule.)

`merge_specs` is that rule, golden-tested in tests/golden/translate/client-traffic-policy-*.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from meshgate.api.models import Gateway, Listener, duration_seconds
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


def _spec_fields(policy: ClientTrafficPolicy) -> dict[str, Any]:
    return policy.spec.model_dump(exclude_none=True, exclude={"target_refs"})


def client_settings(t: _Translator, programmed: list[tuple[Gateway, Listener]]) -> dict[tuple[ObjectKey, str], ClientSettings]:
    """Effective ClientSettings of every programmed listener, and each ClientTrafficPolicy's status."""
    gateways = {(g.metadata.namespace, g.metadata.name): g for g in t.gateways}
    # target (gateway key, section or None) -> the winning policy
    winners: dict[tuple[ObjectKey, str | None], ClientTrafficPolicy] = {}
    from meshgate.gatewayapi.translator import precedence_order

    for policy in precedence_order(p for p in t.policies if isinstance(p, ClientTrafficPolicy)):
        accepted_any = False
        for i, ref in enumerate(policy.spec.target_refs):
            where = ("spec", "targetRefs", i)
            gateway = gateways.get((policy.metadata.namespace, ref.name))
            if gateway is None:
                t.status.condition(policy, Condition("Accepted", "False", "TargetNotFound", t._missing(
                    GATEWAY_GROUP, "Gateway", policy.metadata.namespace, ref.name)), (*where, "name"))
                continue
            if ref.section_name is not None and not any(l.name == ref.section_name for l in gateway.spec.listeners):
                t.status.condition(policy, Condition("Accepted", "False", "TargetNotFound",
                                                     f"{gateway.ref} has no listener named {ref.section_name!r}"),
                                   (*where, "sectionName"))
                continue
            target = (object_key(gateway), ref.section_name)
            holder = winners.setdefault(target, policy)
            if holder is not policy:
                what = f"{gateway.ref}" + (f" listener {ref.section_name}" if ref.section_name else "")
                t.status.condition(policy, Condition("Accepted", "False", "Conflicted",
                                                     f"{holder.ref} already applies to {what} (the older policy wins)"), where)
                continue
            accepted_any = True
        if accepted_any and all(c.status == "True" for c in t.status.of(policy).conditions if c.type == "Accepted"):
            t.status.condition(policy, Condition("Accepted", "True", "Accepted"))

    out: dict[tuple[ObjectKey, str], ClientSettings] = {}
    for gateway, listener in programmed:
        key = object_key(gateway)
        spec: dict[str, Any] = {}
        for section in (None, listener.name):  # the Gateway's policy, then the listener's
            policy = winners.get((key, section))
            if policy is not None:
                spec = merge_specs(spec, _spec_fields(policy))
        out[(key, listener.name)] = settings_from_spec(spec)
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
