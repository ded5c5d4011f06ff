"""Incremental translation (meshgate.gatewayapi.incremental) against translating from scratch.

A series of random edits to a config of several files (route paths, hostnames, identical matches
within and across namespaces, routes added, deleted, broken and fixed, parentRefs and backendRefs
to missing objects, Backends and Gateways edited): after each, the translation the control plane
keeps patching must equal a fresh one (IR, every object's status, every problem), and the Envoy
resources built from it must equal those of the fresh IR.
"""

from __future__ import annotations

import random

import pytest

from meshgate.api.config import all_problems
from meshgate.gatewayapi import TranslationMemo, translate_view
from meshgate.gatewayapi import incremental
from meshgate.providers.file import FileProvider
from meshgate.providers.store import ObjectStore
from meshgate.xds.snapshot import Snapshot
from meshgate.xds.translator import TranslateMemo, TranslateOptions, translate

NAMESPACES = ("team-a", "team-b")
HOSTS = ("a.example.com", "b.example.com", "*.example.com")

GATEWAYS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: team-a}
spec:
  listeners:
    - {name: http, protocol: HTTP, port: 8080, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shared, namespace: team-a, annotations: {meshgate.io/share-hostnames-across-namespaces: "true"}}
spec:
  listeners:
    - {name: http, protocol: HTTP, port: 9090, allowedRoutes: {namespaces: {from: All}}}
    - {name: only-a, protocol: HTTP, port: 9091, hostname: a.example.com, allowedRoutes: {namespaces: {from: All}}}
"""


def backends(port: int) -> str:
    return "---\n".join(f"""\
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: b{i}, namespace: {ns}}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {port + i}}}]
""" for ns in NAMESPACES for i in range(3))


def route_doc(rng: random.Random, ns: str, name: str) -> str:
    """One HTTPRoute with random parents, hostnames, matches and backends (sometimes missing)."""
    parents = rng.choice([["edge"], ["shared"], ["edge", "shared"], ["missing"]])
    parent_refs = ", ".join(f"{{name: {p}, namespace: team-a}}" for p in parents)
    hosts = rng.sample(HOSTS, rng.choice([0, 0, 1, 1, 2]))
    hostnames = f"  hostnames: [{', '.join(hosts)}]\n" if hosts else ""
    rules = []
    for _ in range(rng.choice([1, 1, 2])):
        matches = ", ".join(
            f"{{path: {{type: {rng.choice(['Exact', 'PathPrefix'])}, value: /p{rng.randrange(8 if rng.random() < 0.1 else 1000)}}}}}"
            for _ in range(rng.choice([1, 1, 2])))
        backend = rng.choice(["b0", "b1", "b2", "b9"])  # b9: not found
        # Sometimes a CORS filter: the listener's filter chain then depends on this route.
        cors = ("      filters: [{type: CORS, cors: {allowOrigins: ['https://app.example']}}]\n"
                if rng.random() < 0.1 else "")
        rules.append(f"    - matches: [{matches}]\n{cors}"
                     f"      backendRefs: [{{group: meshgate.io, kind: Backend, name: {backend}}}]\n")
    # Older routes win conflicts: some carry a creationTimestamp (as from Kubernetes).
    created = f", creationTimestamp: '2026-01-0{rng.randrange(1, 9)}T00:00:00Z'" if rng.random() < 0.3 else ""
    body = (f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}{created}}}\n"
            f"spec:\n  parentRefs: [{parent_refs}]\n{hostnames}  rules:\n{''.join(rules)}")
    if rng.random() < 0.05:
        body = body.replace("kind: Backend", "kind: Bakend")  # still valid YAML, a bad kind (InvalidKind)
    if rng.random() < 0.04:
        body = body.replace("rules:", "rulez:")  # invalid: keeps its last valid version
    return body


class Config:
    """Files of routes in a folder, edited at random."""

    def __init__(self, tmp_path, rng: random.Random) -> None:
        self.dir, self.rng = tmp_path, rng
        self.routes: dict[str, dict[str, str]] = {f"routes-{f}.yaml": {} for f in range(4)}
        (tmp_path / "gateways.yaml").write_text(GATEWAYS)
        (tmp_path / "backends.yaml").write_text(backends(10000))
        for i in range(40):
            self.add_route(self.rng.choice(list(self.routes)), f"r{i}")
        for file in self.routes:
            self.write(file)

    def add_route(self, file: str, name: str) -> None:
        ns = self.rng.choice(NAMESPACES)
        self.routes[file][name] = (ns, route_doc(self.rng, ns, name))

    def write(self, file: str) -> None:
        # Written beside and renamed, so each version gets a new (mtime, size, inode) stamp.
        tmp = self.dir / f".{file}.tmp"
        tmp.write_text("---\n".join(doc for _, doc in self.routes[file].values()) or "# empty\n")
        tmp.replace(self.dir / file)

    def edit(self, step: int) -> None:
        rng = self.rng
        what = rng.random()
        if what < 0.04:
            (self.dir / "backends.yaml").write_text(backends(rng.choice([10000, 20000])))  # endpoints only
            return
        if what < 0.06:
            text = GATEWAYS if rng.random() < 0.5 else GATEWAYS.replace("port: 9091", "port: 9092")
            (self.dir / "gateways.yaml").write_text(text)
            return
        files = rng.sample(list(self.routes), rng.choice([1, 1, 1, 2]))
        for file in files:
            routes = self.routes[file]
            for _ in range(rng.choice([1, 1, 2, 3])):
                action = rng.random()
                if action < 0.55 and routes:
                    name = rng.choice(list(routes))
                    ns = routes[name][0]
                    routes[name] = (ns, route_doc(rng, ns, name))  # same object, new spec
                elif action < 0.75:
                    self.add_route(file, f"n{step}-{file[7]}-{len(routes)}")
                elif routes:
                    del routes[rng.choice(list(routes))]
            self.write(file)


def _load(provider: FileProvider):
    loaded = provider.load()
    return loaded.documents, loaded.errors


def statuses(translation) -> dict:
    return {key: status.as_dict() for key, status in translation.status.objects.items()}


@pytest.mark.parametrize("seed", range(10))
def test_patched_translation_equals_a_full_one(tmp_path, seed, monkeypatch):
    patched = []
    real_patch = incremental.patch

    def counting_patch(*args, **kwargs):
        result = real_patch(*args, **kwargs)
        patched.append(result is not None)
        return result

    monkeypatch.setattr(incremental, "patch", counting_patch)
    rng = random.Random(seed)
    config = Config(tmp_path, rng)
    provider, store, memo, xds_memo = FileProvider([str(tmp_path)]), ObjectStore(), TranslationMemo(), TranslateMemo()
    options = TranslateOptions(route_stats=False)
    previous = None
    for step in range(80):
        if step:
            config.edit(step)
        view = store.update(*_load(provider))
        translation = translate_view(view, memo=memo)
        want = translate_view(view)  # the same objects (last valid versions too), no memo
        assert translation.ir == want.ir, f"step {step}: IR differs"
        assert statuses(translation) == statuses(want), f"step {step}: statuses differ"
        assert all_problems(view, translation) == all_problems(view, want), f"step {step}: problems differ"
        assert [r.metadata.name for r in translation.routes] == [r.metadata.name for r in want.routes]
        resources = translate(translation.ir, options, xds_memo)
        snapshot = Snapshot.build(resources, previous=previous)
        assert snapshot.version == Snapshot.build(translate(want.ir, options)).version, f"step {step}"
        previous = snapshot
    # The series must exercise the patch path, not only the full translation.
    print(f"patched {sum(patched)} of {len(patched)}")
    assert sum(patched) >= 10, patched
