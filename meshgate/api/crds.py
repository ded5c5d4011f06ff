"""CustomResourceDefinitions for meshgate's own kinds, and the RBAC the control plane needs.

`meshgate crds` prints one `apiextensions.k8s.io/v1` CustomResourceDefinition per
`meshgate.io/v1alpha1` kind, generated from the same pydantic models (`meshgate.api.schema`) that
validate files, so a field is the same everywhere. The API server stores a CRD's objects as
described by its `openAPIV3Schema`, which must be **structural**
(https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema):

- no `$ref` or `$defs`: every definition is inlined;
- every node has a `type` (or `x-kubernetes-int-or-string` / `x-kubernetes-preserve-unknown-fields`);
- `anyOf`/`allOf`/`oneOf` may only narrow values (no `type`, `description`, `default`, `nullable`,
  `additionalProperties` inside them);
- OpenAPI v3.0 keywords only: no `const`, `examples`, numeric `exclusiveMinimum`, and no
  `additionalProperties: false` (the server *prunes* unknown fields instead; `kubectl apply`
  with its default strict field validation reports them);
- `default`s are left out: the API server would write them into stored objects; meshgate
  applies its defaults itself (each field's description names its default).

`meshgate rbac` prints the ServiceAccount, ClusterRole and ClusterRoleBinding (plus a Role and
RoleBinding for the leader-election Lease in the control plane's namespace) with the least verbs
the control plane uses.
"""

from __future__ import annotations

import json
from typing import Any

from meshgate.api.config import KINDS
from meshgate.api.schema import model_schema

__all__ = ["MESHGATE_GROUP", "crds", "rbac", "structural"]

MESHGATE_GROUP = "meshgate.io"
VERSION = "v1alpha1"

# Keywords an apiextensions.k8s.io/v1 JSONSchemaProps accepts (those meshgate's models produce).
ALLOWED = {
    "type", "description", "properties", "required", "items", "additionalProperties", "enum",
    "pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minItems", "maxItems", "minProperties", "maxProperties", "format", "nullable", "anyOf", "allOf", "oneOf",
    "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
}
# Formats the API server knows; others would be refused or ignored.
FORMATS = {"int32", "int64", "float", "double", "byte", "date", "date-time", "password", "uri", "email",
           "hostname", "ipv4", "ipv6", "uuid", "duration"}
_JUNCTOR_FORBIDDEN = {"type", "description", "default", "nullable", "additionalProperties",
                      "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string"}


class UnsupportedSchema(ValueError):
    """A model construct with no structural-schema equivalent (e.g. a union of two object types)."""


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON Schema (draft 2020-12, with `$defs`) as a structural OpenAPI v3.0 schema."""
    return _convert(schema, schema.get("$defs", {}), ())


def _resolve(node: dict, defs: dict, stack: tuple) -> tuple[dict, tuple]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in stack:
            raise UnsupportedSchema(f"recursive definition {name}: a structural schema can't inline it")
        # Keywords beside the $ref (description) win over the definition's.
        node = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        stack = (*stack, name)
    return node, stack


def _describe(node: dict, out: dict) -> dict:
    parts = [node["description"].strip()] if node.get("description") else []
    default = node.get("default")
    if default not in (None, [], {}):
        parts.append(f"Default: {json.dumps(default, separators=(',', ':'))}.")
    if parts:
        out["description"] = " ".join(parts)
    return out


def _convert(node: dict, defs: dict, stack: tuple) -> dict[str, Any]:
    node, stack = _resolve(node, defs, stack)
    if "anyOf" in node or "oneOf" in node:
        choices = node.get("anyOf") or node.get("oneOf")
        nullable = any(c.get("type") == "null" for c in choices)
        branches = [_resolve(c, defs, stack) for c in choices if c.get("type") != "null"]
        if len(branches) == 1:
            one, one_stack = branches[0]
            outer = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
            out = _convert({**one, **outer}, defs, one_stack)
        else:
            converted = [_convert(b, defs, s) for b, s in branches]
            types = {c.get("type") for c in converted}
            if types == {"string", "integer"}:
                out = {"x-kubernetes-int-or-string": True}  # Kubernetes' IntOrString (sizes such as 64Ki or 65536)
            elif len(types) == 1 and None not in types and types <= {"string", "integer", "number", "boolean"}:
                narrowed = [{k: v for k, v in c.items() if k not in _JUNCTOR_FORBIDDEN} for c in converted]
                out = {"type": types.pop()}
                if all(narrowed):
                    out["anyOf"] = narrowed
            else:
                raise UnsupportedSchema(f"a union of {sorted(map(str, types))} has no structural schema")
            _describe(node, out)
        if nullable:
            out["nullable"] = True
        return out
    out: dict[str, Any] = {}
    kind = node.get("type")
    if kind is None and "const" in node:
        kind = {str: "string", bool: "boolean", int: "integer", float: "number"}.get(type(node["const"]))
    if kind is None and "enum" in node:
        kinds = {type(v) for v in node["enum"] if v is not None}
        kind = {str: "string", bool: "boolean", int: "integer", float: "number"}.get(kinds.pop()) if len(kinds) == 1 else None
    if kind is None and "properties" in node:
        kind = "object"
    if kind is None:  # any JSON value: kept as written
        return _describe(node, {"x-kubernetes-preserve-unknown-fields": True})
    out["type"] = kind
    _describe(node, out)
    if "const" in node:
        out["enum"] = [node["const"]]
    for key in ("enum", "pattern", "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems",
                "minProperties", "maxProperties"):
        if key in node and key not in out:
            out[key] = node[key]
    if "enum" in out:
        out["enum"] = [v for v in out["enum"] if v is not None]
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(key), (int, float)) and not isinstance(node[key], bool):
            out[bound], out[key] = node[key], True  # OpenAPI v3.0: a flag on minimum/maximum
    if node.get("format") in FORMATS:
        out["format"] = node["format"]
    if kind == "object":
        properties = node.get("properties")
        extra = node.get("additionalProperties")
        if properties:
            out["properties"] = {name: _convert(prop, defs, stack) for name, prop in properties.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = _convert(extra, defs, stack)  # a map: string keys, typed values
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True  # free-form object (no fixed fields)
    elif kind == "array":
        items = node.get("items")
        out["items"] = _convert(items, defs, stack) if isinstance(items, dict) else {"x-kubernetes-preserve-unknown-fields": True}
    return out


# -- status schemas (what the status writer puts there) ------------------------------------------

def _string(description: str, **more: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **more}


CONDITION = {
    "type": "object",
    "description": "A metav1.Condition.",
    "required": ["type", "status", "reason", "message", "lastTransitionTime"],
    "properties": {
        "type": _string("Accepted, ResolvedRefs, Programmed...", maxLength=316),
        "status": _string("True, False or Unknown", enum=["True", "False", "Unknown"]),
        "reason": _string("Why, as Gateway API names it", maxLength=1024, minLength=1),
        "message": _string("For people", maxLength=32768),
        "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0,
                               "description": "The metadata.generation this condition was judged on."},
        "lastTransitionTime": _string("When status last changed", format="date-time"),
    },
}
CONDITIONS = {"type": "array", "maxItems": 8, "items": CONDITION,
              "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
PARENT_REF = {
    "type": "object", "required": ["name"],
    "properties": {"group": _string("API group"), "kind": _string("kind"), "namespace": _string("namespace"),
                   "name": _string("name"), "sectionName": _string("listener name"),
                   "port": {"type": "integer", "minimum": 1, "maximum": 65535}},
}


def _entries(ref_field: str, limit: int) -> dict[str, Any]:
    return {"type": "array", "maxItems": limit, "items": {
        "type": "object", "required": [ref_field, "controllerName", "conditions"],
        "properties": {ref_field: PARENT_REF, "controllerName": _string("The controller that wrote this entry"),
                       "conditions": CONDITIONS}}}


ROUTE_STATUS = {"type": "object", "description": "Gateway API RouteStatus: one entry per parent Gateway.",
                "properties": {"parents": _entries("parentRef", 32)}}
POLICY_STATUS = {"type": "object", "description": "Gateway API PolicyStatus: one entry per ancestor Gateway.",
                 "properties": {"ancestors": _entries("ancestorRef", 16)}}
CONDITIONS_STATUS = {"type": "object", "properties": {"conditions": CONDITIONS}}

AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
POLICY_COLUMNS = [{"name": "Accepted", "type": "string",
                   "jsonPath": '.status.ancestors[0].conditions[?(@.type=="Accepted")].reason'}, AGE]
# kind -> (status schema, printer columns, short names)
EXTRAS: dict[str, tuple[dict, list[dict], list[str]]] = {
    "Backend": (CONDITIONS_STATUS, [
        {"name": "Protocol", "type": "string", "jsonPath": ".spec.protocol"},
        {"name": "Accepted", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Accepted")].status'}, AGE], []),
    "HTTPRoute": (ROUTE_STATUS, [{"name": "Hostnames", "type": "string", "jsonPath": ".spec.hostnames"}, AGE], []),
    "ClientTrafficPolicy": (POLICY_STATUS, POLICY_COLUMNS, ["ctp"]),
    "BackendTrafficPolicy": (POLICY_STATUS, POLICY_COLUMNS, ["btp"]),
    "SecurityPolicy": (POLICY_STATUS, POLICY_COLUMNS, ["sp"]),
    "GRPCJSONTranscoder": (CONDITIONS_STATUS, [AGE], []),
}


def _plural(kind: str) -> str:
    """Kubernetes' lower-case plural: `backends`, `securitypolicies`."""
    low = kind.lower()
    if low.endswith("y"):
        return low[:-1] + "ies"
    return low + ("es" if low.endswith(("s", "x")) else "s")


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of one `meshgate.io/v1alpha1` kind."""
    model = KINDS[(f"{MESHGATE_GROUP}/{VERSION}", kind)]
    schema = model_schema(model)
    defs = schema.get("$defs", {})
    spec = _convert(schema["properties"]["spec"], defs, ())
    status, columns, short = EXTRAS.get(kind, (CONDITIONS_STATUS, [AGE], []))
    root = {
        "type": "object",
        "description": (model.__doc__ or kind).strip().split("\n\n")[0].replace("\n", " "),
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
            # metadata is the API server's: a CRD may only say it is an object.
            "metadata": {"type": "object"},
            "spec": spec, "status": status,
        },
        "required": ["spec"] if "spec" in schema.get("required", ()) else [],
    }
    if not root["required"]:
        del root["required"]
    plural = _plural(kind)
    names = {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
             "categories": ["meshgate"]}
    if short:
        names["shortNames"] = short
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{MESHGATE_GROUP}", "labels": {"app.kubernetes.io/part-of": "meshgate"}},
        "spec": {"group": MESHGATE_GROUP, "scope": "Namespaced", "names": names, "versions": [{
            "name": VERSION, "served": True, "storage": True,
            "schema": {"openAPIV3Schema": root},
            "subresources": {"status": {}},
            "additionalPrinterColumns": columns,
        }]},
    }


def meshgate_kinds() -> list[str]:
    return sorted(kind for (api_version, kind) in KINDS if api_version == f"{MESHGATE_GROUP}/{VERSION}")


def crds() -> list[dict[str, Any]]:
    return [crd(kind) for kind in meshgate_kinds()]


def rbac(namespace: str = "meshgate", name: str = "meshgate") -> list[dict[str, Any]]:
    """ServiceAccount, ClusterRole(+Binding) and a Lease Role(+Binding), least privilege:

    - `list`, `watch` on what the informers read (they never `get` one object);
    - `get` too on kinds whose status meshgate writes (a fresh read after a 409 Conflict), and
      `patch` on their `/status` subresource only (the objects themselves are never written);
    - `get`, `create`, `update` on Leases in its own namespace (leader election).
    """
    gw, mg = "gateway.networking.k8s.io", MESHGATE_GROUP
    plurals = [_plural(k) for k in meshgate_kinds()]
    written_gw = ["gatewayclasses", "gateways", "httproutes", "grpcroutes"]
    rules = [
        {"apiGroups": [gw], "resources": [*written_gw, "referencegrants"], "verbs": ["list", "watch"]},
        {"apiGroups": [gw], "resources": written_gw, "verbs": ["get"]},
        {"apiGroups": [gw], "resources": [f"{r}/status" for r in written_gw], "verbs": ["patch"]},
        {"apiGroups": [mg], "resources": plurals, "verbs": ["get", "list", "watch"]},
        {"apiGroups": [mg], "resources": [f"{r}/status" for r in plurals], "verbs": ["patch"]},
        # Secrets are asked for with a field selector (TLS and Opaque only); RBAC can't narrow by type.
        # Namespaces for their labels (Gateway listeners' allowedRoutes namespace selectors).
        # ConfigMaps: all are listed (RBAC can't narrow by name), only those meshgate objects name are kept.
        {"apiGroups": [""], "resources": ["configmaps", "secrets", "services", "namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]
    labels = {"app.kubernetes.io/part-of": "meshgate"}
    subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace, "labels": labels}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name, "labels": labels}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}, "subjects": subject},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": f"{name}-leader-election", "namespace": namespace, "labels": labels},
         "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": f"{name}-leader-election", "namespace": namespace, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{name}-leader-election"},
         "subjects": subject},
    ]
