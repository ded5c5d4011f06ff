"""`meshgate crds` and `meshgate rbac`: the manifests are valid Kubernetes objects (checked with the
schemas `kubernetes-validate` ships for a recent Kubernetes), the CRD schemas are structural (the
API server's rules, checked here keyword by keyword), and the example objects of every kind in the
golden files and examples are accepted by their CRD's schema without losing a field to pruning."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from meshgate.api.crds import ALLOWED, FORMATS, crds, meshgate_kinds, rbac
from meshgate.providers.kubernetes.provider import WATCHED

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = kubernetes_validate.latest_version()


def test_every_manifest_is_a_valid_kubernetes_object() -> None:
    for manifest in [*crds(), *rbac()]:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)  # raises on the first problem


def test_cli_prints_the_same_manifests() -> None:
    out = subprocess.run([sys.executable, "-m", "meshgate", "crds", "--rbac"], capture_output=True, text=True,
                         check=True, timeout=60, cwd=ROOT).stdout
    assert list(yaml.safe_load_all(out)) == crds() + rbac()
    out = subprocess.run([sys.executable, "-m", "meshgate", "rbac", "--namespace", "gw"], capture_output=True,
                         text=True, check=True, timeout=60, cwd=ROOT).stdout
    assert list(yaml.safe_load_all(out)) == rbac("gw")


def test_one_crd_per_kind_with_status_subresource_and_columns() -> None:
    by_kind = {c["spec"]["names"]["kind"]: c for c in crds()}
    assert sorted(by_kind) == ["Backend", "BackendTrafficPolicy", "ClientTrafficPolicy", "EnvoyProxy",
                               "GRPCJSONTranscoder", "HTTPRoute", "SecurityPolicy"] == meshgate_kinds()
    for kind, c in by_kind.items():
        [version] = c["spec"]["versions"]
        assert c["metadata"]["name"] == f"{c['spec']['names']['plural']}.meshgate.io"
        assert version["name"] == "v1alpha1" and version["storage"] and version["subresources"] == {"status": {}}
        assert any(col["name"] == "Age" for col in version["additionalPrinterColumns"])
    # The plurals are those the provider watches.
    assert {c["spec"]["names"]["plural"] for c in crds()} == {w.plural for w in WATCHED if w.group == "meshgate.io"}


def _structural_problems(node: object, path: str, in_junctor: bool = False) -> list[str]:
    """The API server's structural-schema rules, and OpenAPI v3.0's keyword set."""
    if not isinstance(node, dict):
        return [f"{path}: not a schema"]
    problems = [f"{path}: unsupported keyword {k}" for k in node if k not in ALLOWED]
    if in_junctor:
        problems += [f"{path}: {k} inside anyOf/allOf/oneOf" for k in node
                     if k in ("type", "description", "default", "nullable", "additionalProperties")
                     or k.startswith("x-kubernetes")]
    else:
        special = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        if "type" not in node and not special:
            problems.append(f"{path}: no type")
    if node.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties: false")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        problems.append(f"{path}: numeric exclusiveMinimum")
    if "format" in node and node["format"] not in FORMATS:
        problems.append(f"{path}: format {node['format']}")
    pattern = node.get("pattern", "")
    if any(x in pattern for x in ("(?=", "(?!", "(?<")):
        problems.append(f"{path}: pattern {pattern!r} needs lookaround, which Go's RE2 lacks")
    for name, child in (node.get("properties") or {}).items():
        problems += _structural_problems(child, f"{path}.{name}", in_junctor)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += _structural_problems(node[key], f"{path}.{key}", in_junctor)
    for key in ("anyOf", "allOf", "oneOf"):
        for i, child in enumerate(node.get(key) or ()):
            problems += _structural_problems(child, f"{path}.{key}[{i}]", True)
    return problems


def test_schemas_are_structural() -> None:
    for c in crds():
        schema = c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert _structural_problems(schema, c["spec"]["names"]["kind"]) == []
        assert schema["properties"]["metadata"] == {"type": "object"}
        # Free-form only where the model really is free-form.
        text = yaml.safe_dump(schema)
        assert text.count("x-kubernetes-preserve-unknown-fields") <= 3, c["metadata"]["name"]


def test_structural_check_catches_what_the_api_server_refuses() -> None:
    bad = {"type": "object", "properties": {"a": {"$ref": "#/x"}, "b": {"anyOf": [{"type": "string"}]},
                                            "c": {"type": "object", "additionalProperties": False}}}
    problems = _structural_problems(bad, "X")
    assert any("$ref" in p for p in problems) and any("type inside" in p for p in problems)
    assert any("additionalProperties: false" in p for p in problems)


def _as_jsonschema(node: dict) -> dict:
    """An OpenAPI v3.0 structural schema as JSON Schema draft 4, with the API server's pruning made
    strict: a field the schema doesn't know would be silently dropped, so here it fails."""
    node = copy.deepcopy(node)
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = [*(out["type"] if isinstance(out["type"], list) else [out["type"]]), "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in node:
        out["properties"] = {k: _as_jsonschema(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out[key] = _as_jsonschema(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [_as_jsonschema(c) for c in node[key]]
    return out


def _examples() -> dict[str, list[tuple[str, dict]]]:
    files = sorted((ROOT / "tests/golden/translate").glob("*.in.yaml")) + sorted((ROOT / "examples").rglob("*.yaml"))
    out: dict[str, list[tuple[str, dict]]] = {}
    for path in files:
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        for doc in docs:
            if isinstance(doc, dict) and doc.get("apiVersion") == "meshgate.io/v1alpha1":
                out.setdefault(doc["kind"], []).append((str(path.relative_to(ROOT)), doc))
    return out


@pytest.mark.parametrize("kind", meshgate_kinds())
def test_examples_validate_against_their_crd(kind: str) -> None:
    examples = _examples().get(kind, [])
    assert examples, f"no example {kind} in tests/golden/translate or examples/"
    [c] = [c for c in crds() if c["spec"]["names"]["kind"] == kind]
    schema = _as_jsonschema(c["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft4Validator(schema)
    for where, doc in examples:
        errors = [f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert errors == []
    # And a wrong one is refused (the schema is not a blank cheque).
    wrong = copy.deepcopy(examples[0][1])
    wrong["spec"]["noSuchField"] = 1
    assert not validator.is_valid(wrong)


def test_rbac_grants_what_the_control_plane_does_and_no_more() -> None:
    role = next(m for m in rbac() if m["kind"] == "ClusterRole")

    def verbs(group: str, resource: str) -> set[str]:
        return {v for r in role["rules"] if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}

    for kind in WATCHED:  # every informer lists and watches
        assert {"list", "watch"} <= verbs(kind.group, kind.plural), kind.name
    assert verbs("gateway.networking.k8s.io", "gateways/status") == {"patch"}
    assert verbs("meshgate.io", "securitypolicies/status") == {"patch"}
    assert verbs("", "secrets") == {"list", "watch"}  # never get: no reading a named secret
    assert not any(v in ("create", "delete", "update", "*") for r in role["rules"] for v in r["verbs"])
    lease_role = next(m for m in rbac() if m["kind"] == "Role")
    assert lease_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                    "verbs": ["get", "create", "update"]}]
