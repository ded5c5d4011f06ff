"""BackendTrafficPolicy `bandwidthLimit`, `cache` and `timeout.http.maxStreamDuration` without
Envoy: what `meshgate validate` says about bad input, one exact line each. In Envoy's terms:
tests/golden/translate/{bandwidth-limit,cache,websocket-limits}.*; through Envoy:
tests/test_e2e_cache_bandwidth.py, tests/test_e2e_websocket_limits.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.cli import main

CONTEXT = """
---
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
  endpoints: [{address: 127.0.0.1, port: 9000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
    - backendRefs: [{group: meshgate.io, kind: Backend, name: app}]
"""

POLICY = """apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: p}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: shop}]
"""

BAD = [
    ("bandwidth-empty", "  bandwidthLimit: {}\n", "6: spec.bandwidthLimit: a bandwidth limit needs request, response or both"),
    ("bandwidth-not-kib", "  bandwidthLimit: {response: {limit: 1000}}\n",
     "6: spec.bandwidthLimit.response.limit: Envoy limits bandwidth in KiB per second: use a multiple of 1Ki "
     "(1024 bytes), not 1000 bytes"),
    ("bandwidth-not-a-size", "  bandwidthLimit: {request: {limit: fast}}\n",
     "6: spec.bandwidthLimit.request.limit: 'fast' is not a size (use bytes, or a quantity like 32Ki, 1Mi)"),
    ("bandwidth-trailer-prefix", "  bandwidthLimit: {response: {limit: 1Mi, responseTrailers: {prefix: 'X_'}}}\n",
     "6: spec.bandwidthLimit.response.responseTrailers.prefix: 'X_' has the wrong format (expected pattern "
     "^[a-z0-9][a-z0-9-]*$)"),
    ("cache-vary", "  cache: {allowedVaryHeaders: [accept-language]}\n",
     "6: spec.cache: allowedVaryHeaders is not supported: Envoy 1.40 crashes when it caches a response that "
     "varies on an allowed header; responses with Vary are never cached"),
    ("cache-unknown", "  cache: {ttl: 10s}\n", "6: spec.cache.ttl: unknown field"),
    ("cache-body-size", "  cache: {maxBodySize: 0}\n",
     "6: spec.cache.maxBodySize: a size must be a positive number of bytes, or a quantity like 32Ki or 1Mi"),
    ("stream-duration-zero", "  timeout: {http: {maxStreamDuration: 0s}}\n",
     "6: spec.timeout.http.maxStreamDuration: the stream duration must be more than 0"),
]


@pytest.mark.parametrize("body,expected", [pytest.param(b, e, id=i) for i, b, e in BAD])
def test_bad_input_is_one_exact_line(body: str, expected: str, tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "bad.yaml").write_text(POLICY + body + CONTEXT)
    monkeypatch.chdir(tmp_path)
    code = main(["validate", "bad.yaml"])
    assert (code, capsys.readouterr().err.splitlines()) == (1, [f"bad.yaml:{expected}", "1 problem(s) found"])


def test_valid_input(tmp_path: Path, monkeypatch, capsys) -> None:
    body = ("  bandwidthLimit: {request: {limit: 1Mi}, response: {limit: 100Ki, responseTrailers: {prefix: x-mg}}}\n"
            "  cache: {maxBodySize: 1Mi, ignoreRequestCacheControl: true}\n"
            "  timeout: {http: {maxStreamDuration: 1h}}\n")
    (tmp_path / "ok.yaml").write_text(POLICY + body + CONTEXT)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "ok.yaml"]) == 0, capsys.readouterr().err
