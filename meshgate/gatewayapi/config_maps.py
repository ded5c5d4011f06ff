"""ConfigMaps named by policies and Backends, resolved the way Envoy Gateway resolves them.

A Kubernetes ConfigMap is a named set of text values in a namespace. Three fields read one:

| field | key read | if it can't be read |
|---|---|---|
| Backend `spec.tls.caCertificateRefs[]` (`kind: ConfigMap`) | `ca.crt` | the Backend is not programmed (`ResolvedRefs=False InvalidCACertificateRef`, in `backend_tls.py`) |
| SecurityPolicy `spec.jwt.providers[].localJWKS.valueRef` | `jwks`, else the first key | the routes it protects answer 500 (never served unprotected) |
| BackendTrafficPolicy `spec.responseOverride[].response.body.valueRef` | `response.body`, else the first key | that override is left out (Envoy's own reply goes out) |

"The first key" is the first in alphabetical order (Envoy Gateway takes Go's map order, which is
random; a ConfigMap with one key is the case that matters). A valueRef names a ConfigMap in the
policy's own namespace: no cross-namespace reference, so no ReferenceGrant to check.

`inline_value_refs` runs before the policies are attached: each policy with a valueRef is replaced
(for this translation only) by a copy whose valueRefs are `type: Inline` with the ConfigMap's
value, so everything downstream (merging, IR, Envoy config) sees an inline value, and a changed
ConfigMap changes the translation like an edited policy would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from meshgate.api.backend_traffic_shaping import BODY_CONFIG_MAP_KEY
from meshgate.api.policies import BackendTrafficPolicy
from meshgate.api.security_policy import JWKS_CONFIG_MAP_KEY, SecurityPolicy, jwks_problem
from meshgate.gatewayapi.status import Condition

if TYPE_CHECKING:
    from meshgate.gatewayapi.translator import _Translator

__all__ = ["ca_bundle", "config_map_value", "inline_value_refs"]

CA_KEY = "ca.crt"


def config_map_value(t: _Translator, ns: str, name: str, key: str, *, first_key: bool = True) -> tuple[str | None, str]:
    """(the value, the key read) or (None, why not). `first_key`: without `key`, read the first one."""
    config_map = t.config_maps.get((ns, name))
    if config_map is None:
        return None, t._missing("", "ConfigMap", ns, name)
    value = config_map.value(key)
    if value is not None:
        return value, key
    keys = config_map.keys()
    if first_key and keys:
        value = config_map.value(keys[0])
        if value is not None:
            return value, keys[0]
    held = f" (its keys: {', '.join(keys)})" if keys else " (it is empty)"
    return None, f"ConfigMap {ns}/{name} has no {key}{held}"


def ca_bundle(t: _Translator, ns: str, name: str) -> tuple[bytes | None, str]:
    """The PEM CA bundle of a ConfigMap's `ca.crt` (as a BackendTLSPolicy's ConfigMap holds it)."""
    value, why = config_map_value(t, ns, name, CA_KEY, first_key=False)
    return (value.encode(), "") if value is not None else (None, why)  # checked as PEM by the caller


def inline_value_refs(t: _Translator) -> None:
    """Replace, in `t.policies`, each policy with a ConfigMap valueRef by a copy with the value
    inline; problems go to the policy's status (with the field's file and line)."""
    for i, policy in enumerate(t.policies):
        # Checked on the model first: most policies have no valueRef, and cost nothing here.
        if isinstance(policy, SecurityPolicy) and policy.spec.jwt is not None and any(
                p.local_jwks is not None and p.local_jwks.type == "ValueRef" for p in policy.spec.jwt.providers or ()):
            copy = _inline(t, policy, _jwks_refs)
        elif isinstance(policy, BackendTrafficPolicy) and any(
                o.response.body is not None and o.response.body.type == "ValueRef" for o in policy.spec.response_override or ()):
            copy = _inline(t, policy, _body_refs)
        else:
            continue
        if copy is not policy:
            t.key_of[id(copy)] = t.key_of[id(policy)]  # the same object for statuses
            t.inlined.append(policy)  # kept alive: ids are keys
            t.policies[i] = copy


def _jwks_refs(spec: dict[str, Any]) -> list[tuple[dict, tuple, str]]:
    """(the dict holding type/inline/valueRef, its path under spec, key) per JWKS valueRef."""
    out = []
    for n, provider in enumerate((spec.get("jwt") or {}).get("providers") or ()):
        local = provider.get("localJWKS")
        if local and local.get("type") == "ValueRef":
            out.append((local, ("jwt", "providers", n, "localJWKS"), JWKS_CONFIG_MAP_KEY))
    return out


def _body_refs(spec: dict[str, Any]) -> list[tuple[dict, tuple, str]]:
    out = []
    for n, override in enumerate(spec.get("responseOverride") or ()):
        body = (override.get("response") or {}).get("body")
        if body and body.get("type") == "ValueRef":
            out.append((body, ("responseOverride", n, "response", "body"), BODY_CONFIG_MAP_KEY))
    return out


def _inline(t: _Translator, policy: Any, find: Any) -> Any:
    data = policy.model_dump(by_alias=True, exclude_none=True)
    refs = find(data["spec"])
    if not refs:
        return policy
    ns = policy.metadata.namespace
    dropped: list[int] = []  # responseOverride entries left out
    for holder, path, key in refs:
        name = holder["valueRef"]["name"]
        value, why = config_map_value(t, ns, name, key)
        if value is not None and path[0] == "jwt":
            problem = jwks_problem(value, f"ConfigMap {ns}/{name} key {why}")
            why = problem or ""
            value = None if problem else value
        if value is None:
            t.status.condition(policy, Condition("ResolvedRefs", "False", "InvalidReference", why),
                               ("spec", *path, "valueRef", "name"))
            if path[0] == "responseOverride":
                dropped.append(path[1])
            continue  # a JWKS left as a valueRef: security.py makes its routes answer 500
        holder.pop("valueRef")
        holder.update(type="Inline", inline=value)
    try:
        return type(policy).model_validate(_without(data, dropped))
    except ValidationError as exc:  # e.g. a value over the inline size limit
        error = exc.errors()[0]
        where = tuple(p for p in error["loc"] if p != "inline")
        t.status.condition(policy, Condition("ResolvedRefs", "False", "InvalidReference",
                                             f"the ConfigMap's value can't be used: {error['msg']}"), where)
    if isinstance(policy, SecurityPolicy):
        return policy  # its JWKS stay valueRefs: its routes answer 500
    # Every override that reads a ConfigMap is left out, the rest of the policy applies.
    return type(policy).model_validate(_without(policy.model_dump(by_alias=True, exclude_none=True),
                                                [path[1] for _, path, _ in refs]))


def _without(data: dict[str, Any], overrides: list[int]) -> dict[str, Any]:
    """`data` without the responseOverride entries numbered `overrides`."""
    if overrides:
        kept = [o for n, o in enumerate(data["spec"]["responseOverride"]) if n not in overrides]
        if kept:
            data["spec"]["responseOverride"] = kept
        else:
            del data["spec"]["responseOverride"]
    return data
