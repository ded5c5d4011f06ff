"""Backend `fallback` without Envoy: the rules a failover group must follow, each refused with
`ResolvedRefs=False` (reason InvalidFallback) and the rule answering 500, never served without
failover. What it becomes in Envoy's terms: tests/golden/translate/failover.*; through Envoy:
tests/test_e2e_failover.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.api.config import load_translation
from meshgate.cli import main

BACKENDS = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: main}
spec:
  endpoints: [{address: 10.0.0.1, port: 80}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: spare}
spec:
  fallback: true
  endpoints: [{address: 10.0.0.2, port: 80}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: spare-dns}
spec:
  fallback: true
  endpoints: [{address: spare.example, port: 80}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: spare-random}
spec:
  fallback: true
  loadBalancer: {type: Random}
  endpoints: [{address: 10.0.0.3, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: svc}
spec:
  ports: [{port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: edge}]
  rules:
    - backendRefs:
"""


def _refs(*names: str) -> str:
    out = ""
    for name in names:
        out += (f"        - {{name: {name}, port: 80}}\n" if name == "svc"
                else f"        - {{group: meshgate.io, kind: Backend, name: {name}}}\n")
    return out


@pytest.mark.parametrize("refs,message", [
    (("spare",), "every Backend of this rule is a fallback: at least one must be primary"),
    (("svc", "spare"), "a rule with a fallback Backend can only use meshgate.io Backends"),
    (("main", "spare-dns"), "differs in endpoint kind (IP or DNS name)"),
    (("main", "spare-random"), "differs in loadBalancer.type"),
])
def test_a_failover_group_that_cant_be_one_cluster_is_refused(refs, message, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(BACKENDS + _refs(*refs))
    translation, problems = load_translation([str(tmp_path / "c.yaml")], environ={})
    assert len(problems) == 1 and message in str(problems[0]), problems
    route = next(s for k, s in translation.status.objects.items() if k[1] == "HTTPRoute")
    [resolved] = [c for c in route.conditions if c.type == "ResolvedRefs"]
    assert (resolved.status, resolved.reason) == ("False", "InvalidFallback")
    [ir_route] = [r for l in translation.ir.listeners for v in l.virtual_hosts for r in v.routes]
    assert [d.cluster for d in ir_route.destinations] == [None]  # answered 500


def test_fallback_must_be_a_boolean(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "bad.yaml").write_text(BACKENDS.replace("fallback: true", "fallback: sometimes", 1) + _refs("main"))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "bad.yaml"]) == 1
    assert capsys.readouterr().err.splitlines()[0] == "bad.yaml:18: spec.fallback: input should be a valid boolean, unable to interpret input"


def test_without_fallback_nothing_changes(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(BACKENDS + _refs("main"))
    translation, problems = load_translation([str(tmp_path / "c.yaml")], environ={})
    assert not problems
    assert not any("/failover-" in c.name for c in translation.ir.clusters)
