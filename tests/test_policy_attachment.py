"""Policy attachment, for every kind of target a policy may name (Gateway, listener, route, named
rule, Backend): which policy applies where, the statuses of those that don't, and the field-by-field
merge along the chain from least to most specific target. ClientTrafficPolicy uses the Gateway
and listener part through Envoy (tests/test_e2e_edge.py); route-level kinds will use the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from meshgate.api.models import Model, Resource
from meshgate.api.policies import PolicyTargetReference
from meshgate.gatewayapi.policies import attach_policies, merged_spec
from meshgate.gatewayapi.translator import _read_file, _Translator
from meshgate.providers.file import SourceDocument, load_documents
from meshgate.providers.store import ObjectStore

CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: app}
spec:
  endpoints: [{address: 10.0.0.1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
    - name: checkout
      backendRefs: [{group: meshgate.io, kind: Backend, name: app}]
    - backendRefs: [{group: meshgate.io, kind: Backend, name: app}]
"""


class _Settings(Model):
    retries: int | None = None
    timeout: dict[str, str] | None = None


class _Spec(_Settings):
    target_refs: list[PolicyTargetReference] = Field(min_length=1)


class _Policy(Resource):
    """A stand-in policy kind: attachment only reads targetRefs and the spec's fields."""

    api_version: Literal["meshgate.io/v1alpha1"] = "meshgate.io/v1alpha1"
    kind: Literal["TestPolicy"] = "TestPolicy"
    spec: _Spec


def policy(name: str, refs: list[dict], **fields) -> _Policy:  # noqa: ANN003
    return _Policy.model_validate({"metadata": {"name": name}, "spec": {"targetRefs": refs, **fields}})


GW = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}
ROUTE = {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "shop"}
BACKEND = {"group": "meshgate.io", "kind": "Backend", "name": "app"}
KEY_GW = ("gateway.networking.k8s.io", "Gateway", "default", "edge")
KEY_ROUTE = ("gateway.networking.k8s.io", "HTTPRoute", "default", "shop")


@pytest.fixture
def translator(tmp_path: Path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    docs, errors = load_documents([str(tmp_path)], environ={})
    view = ObjectStore().update(docs, errors)

    def make(*policies: _Policy) -> _Translator:
        doc = SourceDocument(str(tmp_path / "policies.yaml"), 1, {})
        return _Translator([*view.objects, *((p, doc) for p in policies)], set(), _read_file)
    return make


def accepted(t: _Translator, p: _Policy) -> dict:
    return next(c for c in t.status.of(p).conditions if c.type == "Accepted").as_dict()


def test_every_kind_of_target_resolves(translator) -> None:  # noqa: ANN001
    policies = [policy("on-gateway", [GW]), policy("on-listener", [{**GW, "sectionName": "http"}]),
                policy("on-route", [ROUTE]), policy("on-rule", [{**ROUTE, "sectionName": "checkout"}]),
                policy("on-backend", [BACKEND])]
    t = translator(*policies)
    winners = attach_policies(t, policies)
    assert {target: p.metadata.name for target, p in winners.items()} == {
        (KEY_GW, None): "on-gateway", (KEY_GW, "http"): "on-listener", (KEY_ROUTE, None): "on-route",
        (KEY_ROUTE, "checkout"): "on-rule", (("meshgate.io", "Backend", "default", "app"), None): "on-backend"}
    assert all(accepted(t, p)["status"] == "True" for p in policies)


@pytest.mark.parametrize("ref, reason", [
    ({**GW, "name": "absent"}, "Gateway default/absent not found"),
    ({**GW, "sectionName": "https"}, "Gateway default/edge has no listener named 'https'"),
    ({**ROUTE, "sectionName": "unnamed"}, "HTTPRoute default/shop has no rule named 'unnamed'"),
    ({**BACKEND, "sectionName": "x"}, "a Backend has no sections"),
    ({"group": "", "kind": "Service", "name": "app"}, "/Service can't be a policy target"),
])
def test_a_missing_target_is_target_not_found(translator, ref: dict, reason: str) -> None:  # noqa: ANN001
    p = policy("p", [ref])
    t = translator(p)
    assert attach_policies(t, [p]) == {}
    condition = accepted(t, p)
    assert (condition["status"], condition["reason"]) == ("False", "TargetNotFound")
    assert condition["message"].endswith(reason)


def test_the_older_then_alphabetically_first_policy_keeps_a_target(translator) -> None:  # noqa: ANN001
    b, a = policy("b", [ROUTE]), policy("a", [ROUTE, GW])
    t = translator(b, a)
    winners = attach_policies(t, [b, a])
    assert winners[(KEY_ROUTE, None)] is a and winners[(KEY_GW, None)] is a
    assert accepted(t, b)["reason"] == "Conflicted" and "TestPolicy default/a already applies" in accepted(t, b)["message"]


def test_more_specific_wins_field_by_field_along_the_chain(translator) -> None:  # noqa: ANN001
    policies = [policy("gw", [GW], retries=1, timeout={"request": "10s", "idle": "1m"}),
                policy("route", [ROUTE], timeout={"request": "5s"}),
                policy("rule", [{**ROUTE, "sectionName": "checkout"}], retries=3)]
    t = translator(*policies)
    winners = attach_policies(t, policies)
    chain = [(KEY_GW, None), (KEY_GW, "http"), (KEY_ROUTE, None), (KEY_ROUTE, "checkout")]
    assert merged_spec(winners, chain) == {"retries": 3, "timeout": {"request": "5s", "idle": "1m"}}
    # The unnamed rule has no rule-level policy: the route's and the Gateway's apply.
    assert merged_spec(winners, chain[:3]) == {"retries": 1, "timeout": {"request": "5s", "idle": "1m"}}
