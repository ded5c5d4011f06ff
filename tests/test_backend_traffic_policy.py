"""BackendTrafficPolicy without Envoy: what `meshgate validate` says about bad input (one
`FILE:LINE: field: problem` line each), the policy's status (Accepted, TargetNotFound,
Conflicted), and endpoint updates reaching every cluster variant of a Backend. What the policy
becomes in Envoy's terms: tests/golden/translate/backend-traffic-*; through Envoy:
tests/test_e2e_resilience.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshgate.api.backend_traffic_policy import UNSUPPORTED
from meshgate.api.config import load_translation
from meshgate.cli import main
from meshgate.controlplane.pipeline import ControlPlane
from meshgate.xds.snapshot import ENDPOINT, SnapshotCache

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
    - name: checkout
      matches: [{path: {type: PathPrefix, value: /checkout}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: app}]
    - backendRefs: [{group: meshgate.io, kind: Backend, name: app}]
"""

# A policy on the route; a case's lines start at line 6.
POLICY = """apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: p}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: shop}]
"""


def policy(body: str, refs: str | None = None) -> str:
    text = POLICY
    if refs is not None:
        text = text.replace("[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: shop}]", refs)
    return text + body


def _rl(selector: str) -> str:
    return ("  rateLimit:\n    local:\n      rules:\n        - clientSelectors: [" + selector
            + "]\n          limit: {requests: 1, unit: Second}\n")


BAD = [
    # rateLimit (local): tests/golden/translate/rate-limit-local.*, tests/test_e2e_shaping.py
    # rateLimit.global: tests/golden/translate/rate-limit-global.*, tests/test_e2e_global_ratelimit.py
    ("rate-limit-global-no-rules", policy("  rateLimit: {type: Global, global: {rules: []}}\n"),
     "6: spec.rateLimit.global.rules: list should have at least 1 item after validation, not 0"),
    ("rate-limit-global-missing", policy("  rateLimit: {type: Global}\n"),
     "6: spec.rateLimit: type Global needs global (with its rules)"),
    ("rate-limit-none", policy("  rateLimit: {}\n"),
     "6: spec.rateLimit: a rate limit needs local or global (with their rules)"),
    ("rate-limit-global-timeout", policy("  rateLimit:\n    global:\n      timeout: 0s\n"
                                          "      rules: [{limit: {requests: 1, unit: Second}}]\n"),
     "8: spec.rateLimit.global.timeout: the timeout must be more than 0 and at most 10s"),
    ("rate-limit-global-mode", policy("  rateLimit:\n    global:\n      mode: Fast\n"
                                       "      rules: [{limit: {requests: 1, unit: Second}}]\n"),
     "8: spec.rateLimit.global.mode: input should be 'Exact' or 'Budget'"),
    ("rate-limit-budget-day", policy("  rateLimit:\n    global:\n      mode: Budget\n"
                                      "      rules: [{limit: {requests: 1, unit: Day}}]\n"),
     "7: spec.rateLimit.global: mode Budget enforces rates (per Second, Minute or Hour); a quota per Day, Month "
     "or Year needs mode Exact"),
    ("rate-limit-budget-cidr", policy("  rateLimit:\n    global:\n      mode: Budget\n      rules:\n"
                                       "        - clientSelectors: [{sourceCIDR: {value: 10.0.0.0/8}}]\n"
                                       "          limit: {requests: 1, unit: Second}\n"),
     "7: spec.rateLimit.global: mode Budget selects clients by headers (Exact or Distinct) only; use mode Exact "
     "for methods, sourceCIDR, regular expressions or invert"),
    ("rate-limit-global-shadow", policy("  rateLimit:\n    global:\n      rules:\n"
                                         "        - {limit: {requests: 1, unit: Second}, shadowMode: true}\n"),
     "9: spec.rateLimit.global.rules[0]: rules field 'shadowMode' (from Envoy Gateway) is not supported by "
     "meshgate yet"),
    ("rate-limit-no-local", policy("  rateLimit: {type: Local}\n"),
     "6: spec.rateLimit: type Local needs local (with its rules)"),
    ("rate-limit-two-defaults", policy("  rateLimit:\n    local:\n      rules: [{limit: {requests: 1, unit: Second}}, "
                                       "{limit: {requests: 2, unit: Minute}}]\n"),
     "8: spec.rateLimit.local.rules: only one rule may have no clientSelectors (the route's overall limit)"),
    ("rate-limit-distinct-value", policy(_rl("{headers: [{name: x-u, type: Distinct, value: a}]}")),
     "9: spec.rateLimit.local.rules[0].clientSelectors[0].headers[0]: type Distinct takes no value and no invert: "
     "each value of the header is counted on its own"),
    ("rate-limit-exact-without-value", policy(_rl("{headers: [{name: x-u}]}")),
     "9: spec.rateLimit.local.rules[0].clientSelectors[0].headers[0]: type Exact needs a value"),
    ("rate-limit-bad-regex", policy(_rl("{headers: [{name: x-u, type: RegularExpression, value: '(?=a)'}]}")),
     "9: spec.rateLimit.local.rules[0].clientSelectors[0].headers[0]: invalid regular expression (RE2): invalid "
     "perl operator: (?="),
    ("rate-limit-bad-cidr", policy(_rl("{sourceCIDR: {value: 10.0.0.0/33}}")),
     "9: spec.rateLimit.local.rules[0].clientSelectors[0].sourceCIDR.value: '10.0.0.0/33' is not a CIDR range "
     "(e.g. 10.0.0.0/8, 2001:db8::/32)"),
    ("rate-limit-empty-selector", policy(_rl("{}")),
     "9: spec.rateLimit.local.rules[0].clientSelectors[0]: a client selector needs headers, methods or sourceCIDR"),
    ("rate-limit-path", policy(_rl("{path: {value: /x}}")),
     "9: spec.rateLimit.local.rules[0].clientSelectors[0]: clientSelectors field 'path' (from Envoy Gateway) is "
     "not supported by meshgate yet: use a policy on a rule with a path match"),
    # compression: tests/golden/translate/compression.*, tests/test_e2e_shaping.py
    ("compression-twice", policy("  compression: [{type: Gzip}, {type: Gzip}]\n"),
     "6: spec.compression: each compression type may be listed once"),
    ("compression-other-options", policy("  compression: [{type: Gzip, brotli: {quality: 3}}]\n"),
     "6: spec.compression[0]: brotli is only used with type Brotli"),
    ("compression-min-length", policy("  compression: [{type: Gzip, minContentLength: 10}]\n"),
     "6: spec.compression[0].minContentLength: Envoy compresses nothing under 30 bytes: use 30 or more"),
    ("compression-content-type", policy("  compression: [{type: Gzip, contentTypes: ['text/html; charset=utf-8']}]\n"),
     "6: spec.compression[0].contentTypes: 'text/html; charset=utf-8' is not a content type in lowercase without "
     "parameters (e.g. application/json)"),
    ("compression-unsupported-option", policy("  compression: [{type: Gzip, gzip: {windowBits: 10}}]\n"),
     "6: spec.compression[0].gzip: gzip field 'windowBits' (from Envoy Gateway) is not supported by meshgate yet"),
    ("compressor", policy("  compressor: [{type: Gzip}]\n"),
     "4: spec: BackendTrafficPolicy field 'compressor' (from Envoy Gateway) is not supported by meshgate yet: use "
     "compression (a list, one item per algorithm)"),
    ("rate-limit-zero", policy("  rateLimit:\n    local:\n      rules:\n        - limit: {requests: 0, unit: Second}\n"),
     "9: spec.rateLimit.local.rules[0].limit.requests: input should be greater than or equal to 1"),
    # adaptiveConcurrency: tests/golden/translate/adaptive-concurrency.*, tests/test_e2e_adaptive_concurrency.py
    ("adaptive-both-rtt", policy("  adaptiveConcurrency: {minRTTCalcParams: {interval: 30s, fixedValue: 10ms}}\n"),
     "6: spec.adaptiveConcurrency.minRTTCalcParams: set interval (measure the ideal latency) or fixedValue (give "
     "it), not both"),
    ("adaptive-zero-update", policy("  adaptiveConcurrency: {concurrencyLimitParams: {concurrencyUpdateInterval: 0s}}\n"),
     "6: spec.adaptiveConcurrency.concurrencyLimitParams.concurrencyUpdateInterval: the interval must be more than 0"),
    ("adaptive-status", policy("  adaptiveConcurrency: {concurrencyLimitExceededStatus: 418}\n"),
     "6: spec.adaptiveConcurrency.concurrencyLimitExceededStatus: 418 is not a status Envoy can send here; one of "
     "400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 423, 424, "
     "426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511"),
    ("adaptive-unknown", policy("  adaptiveConcurrency: {minRttCalcParams: {interval: 30s}}\n"),
     "6: spec.adaptiveConcurrency.minRttCalcParams: unknown field; did you mean minRTTCalcParams?"),
    # faultInjection: tests/golden/translate/fault-injection.*, tests/test_e2e_shaping.py
    ("fault-empty", policy("  faultInjection: {}\n"), "6: spec.faultInjection: fault injection needs a delay, an abort or both"),
    ("fault-two-statuses", policy("  faultInjection: {abort: {httpStatus: 503, grpcStatus: 14}}\n"),
     "6: spec.faultInjection.abort: an abort needs exactly one of httpStatus and grpcStatus"),
    ("fault-zero-delay", policy("  faultInjection: {delay: {fixedDelay: 0s}}\n"),
     "6: spec.faultInjection.delay.fixedDelay: the delay must be more than 0"),
    ("fault-percentage", policy("  faultInjection: {abort: {httpStatus: 503, percentage: 101}}\n"),
     "6: spec.faultInjection.abort.percentage: input should be less than or equal to 100"),
    ("per-endpoint", policy("  circuitBreaker: {perEndpoint: {maxConnections: 1}}\n"),
     "6: spec.circuitBreaker: circuitBreaker field 'perEndpoint' (from Envoy Gateway) is not supported by meshgate yet"),
    ("pending-zero", policy("  circuitBreaker: {maxPendingRequests: 0}\n"),
     "6: spec.circuitBreaker.maxPendingRequests: 0 makes the backend unreachable over HTTP/1.1: a request waiting "
     "for a new connection counts as pending in Envoy, so every such request would get 503; use 1 or more"),
    ("listener-target", policy("", "[{group: gateway.networking.k8s.io, kind: Gateway, name: edge, sectionName: http}]"),
     "5: spec.targetRefs: a BackendTrafficPolicy applies to a whole Gateway; a listener (sectionName) can't be "
     "targeted yet"),
    ("backend-target", policy("", "[{group: meshgate.io, kind: Backend, name: app}]"),
     "5: spec.targetRefs: a BackendTrafficPolicy targets a Gateway, HTTPRoute or GRPCRoute (group "
     "gateway.networking.k8s.io) or a meshgate.io HTTPRoute, not meshgate.io/Backend"),
    ("codes-without-trigger", policy("  retry:\n    retryOn: {triggers: [5xx], httpStatusCodes: [503]}\n"),
     "7: spec.retry.retryOn: httpStatusCodes needs the retriable-status-codes trigger in triggers"),
    ("bad-trigger", policy("  retry:\n    retryOn: {triggers: [5xx, timeout]}\n"),
     "7: spec.retry.retryOn.triggers[1]: input should be '5xx', 'gateway-error', 'reset', 'connect-failure', "
     "'retriable-4xx', 'refused-stream', 'retriable-status-codes', 'cancelled', 'deadline-exceeded', 'internal', "
     "'resource-exhausted' or 'unavailable'"),
    ("backoff-order", policy("  retry:\n    perRetry:\n      backOff: {baseInterval: 1s, maxInterval: 100ms}\n"),
     "8: spec.retry.perRetry.backOff: maxInterval must be at least baseInterval"),
    ("http-check-without-path", policy("  healthCheck:\n    active: {type: HTTP}\n"),
     "7: spec.healthCheck.active: type HTTP needs http (at least its path)"),
    ("zero-interval", policy("  healthCheck:\n    active: {type: TCP, interval: 0s}\n"),
     "7: spec.healthCheck.active.interval: the duration must be more than 0"),
    ("hash-without-header", policy("  loadBalancer: {type: ConsistentHash, consistentHash: {type: Header}}\n"),
     "6: spec.loadBalancer.consistentHash: type Header needs header"),
    ("slow-start-random", policy("  loadBalancer: {type: Random, slowStart: {window: 10s}}\n"),
     "6: spec.loadBalancer: slowStart works with RoundRobin and LeastRequest only"),
]

GOOD = [
    ("everything", policy(
        "  timeout:\n    tcp: {connectTimeout: 1s}\n    http: {requestTimeout: 5s, connectionIdleTimeout: 1m}\n"
        "  retry: {numRetries: 3, retryOn: {triggers: [5xx]}, perRetry: {timeout: 1s}, methods: [GET, POST]}\n"
        "  circuitBreaker: {maxPendingRequests: 1, retryBudget: {percent: 10}}\n"
        "  healthCheck: {active: {type: GRPC}, passive: {}, panicThreshold: 0}\n"
        "  loadBalancer: {type: ConsistentHash, consistentHash: {type: Cookie, cookie: {name: s, ttl: 1h}}}\n")),
    ("rate-limit", policy(
        "  rateLimit:\n    type: Local\n    local:\n      rules:\n        - limit: {requests: 10, unit: Second}\n"
        "        - clientSelectors: [{headers: [{name: x-u, type: Distinct}], sourceCIDR: {value: 10.0.0.0/8}},\n"
        "                            {methods: [{value: POST}, {value: PUT}]}]\n"
        "          limit: {requests: 1, unit: Year}\n")),
    ("compression", policy(
        "  compression:\n    - {type: Brotli, brotli: {quality: 11}, minContentLength: 1Ki}\n"
        "    - {type: Zstd, zstd: {compressionLevel: 22}, contentTypes: [application/json, text/csv]}\n"
        "    - {type: Gzip, gzip: {compressionLevel: 1}, minContentLength: 30}\n")),
]


def _validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, text: str):
    (tmp_path / "bad.yaml").write_text(text + CONTEXT)
    monkeypatch.chdir(tmp_path)
    code = main(["validate", "bad.yaml"])
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("text,expected", [pytest.param(t, e, id=i) for i, t, e in BAD])
def test_bad_input_is_one_exact_line(text: str, expected: str, tmp_path, monkeypatch, capsys) -> None:
    code, lines = _validate(tmp_path, monkeypatch, capsys, text)
    assert (code, lines) == (1, [f"bad.yaml:{expected}", "1 problem(s) found"])


@pytest.mark.parametrize("text", [pytest.param(t, id=i) for i, t in GOOD])
def test_valid_input(text: str, tmp_path, monkeypatch, capsys) -> None:
    assert _validate(tmp_path, monkeypatch, capsys, text) == (0, [])


@pytest.mark.parametrize("field", sorted(UNSUPPORTED))
def test_every_unsupported_envoy_gateway_field_is_named(field: str) -> None:
    from meshgate.api.backend_traffic_policy import BackendTrafficPolicySpec

    with pytest.raises(ValueError, match=f"field '{field}' \\(from Envoy Gateway\\) is not supported by meshgate yet"):
        BackendTrafficPolicySpec.model_validate({"targetRefs": [{"group": "", "kind": "x", "name": "y"}], field: {}})


# -- status -------------------------------------------------------------------------------------


def _translate(tmp_path: Path, text: str, problems_expected: bool = False):
    (tmp_path / "c.yaml").write_text(text + CONTEXT)
    translation, problems = load_translation([str(tmp_path / "c.yaml")], environ={})
    assert bool(problems) == problems_expected, problems
    return translation


def _accepted(translation, name: str) -> list[dict]:
    key = next(k for k in translation.status.objects if k[1] == "BackendTrafficPolicy" and k[3] == name)
    return [c.as_dict() for c in translation.status.objects[key].conditions if c.type == "Accepted"]


def test_status_accepted_target_not_found_and_conflicted(tmp_path: Path) -> None:
    text = (policy("  retry: {numRetries: 1}\n").replace("name: p", "name: a")
            + "---\n" + policy("  retry: {numRetries: 2}\n").replace("name: p", "name: b")
            + "---\n" + policy("  retry: {numRetries: 3}\n",
                               "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: shop, sectionName: nope}]")
            .replace("name: p", "name: c"))
    t = _translate(tmp_path, text, problems_expected=True)
    assert [c["reason"] for c in _accepted(t, "a")] == ["Accepted"]
    [b] = _accepted(t, "b")
    assert (b["status"], b["reason"]) == ("False", "Conflicted")
    assert "BackendTrafficPolicy default/a already applies" in b["message"]
    [c] = _accepted(t, "c")
    assert (c["status"], c["reason"]) == ("False", "TargetNotFound")
    assert "has no rule named 'nope'" in c["message"]


def test_cluster_variants_are_shared_by_equal_settings(tmp_path: Path) -> None:
    # Route-level policy: both rules get the same circuit breaker, so one variant serves both;
    # the rule-level policy changes a cluster setting: a second variant.
    text = (policy("  circuitBreaker: {maxConnections: 10}\n")
            + "---\n" + policy("  healthCheck: {passive: {}}\n",
                               "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: shop, sectionName: checkout}]")
            .replace("name: p", "name: rule"))
    t = _translate(tmp_path, text)
    names = sorted(c.name for c in t.ir.clusters)
    assert names[0] == "backend/default/app" and len(names) == 3
    assert all(n.startswith("backend/default/app/policy-") for n in names[1:])
    routes = {r.name: r for l in t.ir.listeners for v in l.virtual_hosts for r in v.routes}
    checkout = routes["httproute/default/shop/rule/0/match/0"].destinations[0].cluster
    other = routes["httproute/default/shop/rule/1/match/0"].destinations[0].cluster
    assert checkout != other and {checkout, other} == set(names[1:])
    # Deterministic: the same settings give the same names on the next translation.
    assert sorted(c.name for c in _translate(tmp_path, text).ir.clusters) == names


async def test_endpoint_updates_reach_every_variant(tmp_path: Path) -> None:
    """set_endpoints (what a Kubernetes or Consul provider calls) names the Backend; its
    variants share its endpoints, so they must get the new ClusterLoadAssignment too."""
    (tmp_path / "c.yaml").write_text(policy("  circuitBreaker: {maxConnections: 10}\n") + CONTEXT)
    plane = ControlPlane([str(tmp_path / "c.yaml")], SnapshotCache())
    assert plane.reload()
    variant = next(n for n in plane.snapshot.resources[ENDPOINT] if "/policy-" in n)
    plane.set_endpoints("default", "app", [("127.0.0.2", 9001, 1), ("127.0.0.3", 9001, 1)])
    for _ in range(100):
        await asyncio.sleep(0.02)
        eds = plane.snapshot.resources[ENDPOINT]
        if len(eds[variant].endpoints[0].lb_endpoints) == 2:
            break
    for name in ("backend/default/app", variant):
        cla = plane.snapshot.resources[ENDPOINT][name]
        assert cla.cluster_name == name
        assert [e.endpoint.address.socket_address.address for e in cla.endpoints[0].lb_endpoints] == ["127.0.0.2", "127.0.0.3"]
    # ... and a reload (any config edit) keeps them.
    plane.reload()
    assert len(plane.snapshot.resources[ENDPOINT][variant].endpoints[0].lb_endpoints) == 2


def test_a_route_on_two_gateways_takes_the_first_gateways_policy(tmp_path: Path) -> None:
    second = """---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other}
spec:
  listeners: [{name: http, protocol: HTTP, port: 9090}]
---
"""
    gw = "[{group: gateway.networking.k8s.io, kind: Gateway, name: %s}]"
    text = (second + policy("  retry: {numRetries: 1}\n", gw % "edge").replace("name: p", "name: on-edge")
            + "---\n" + policy("  retry: {numRetries: 5}\n", gw % "other").replace("name: p", "name: on-other"))
    (tmp_path / "c.yaml").write_text(text + CONTEXT.replace("parentRefs: [{name: edge}]",
                                                            "parentRefs: [{name: edge}, {name: other}]"))
    translation, _ = load_translation([str(tmp_path / "c.yaml")], environ={})
    retries = {r.retry.num_retries for l in translation.ir.listeners for v in l.virtual_hosts for r in v.routes}
    assert retries == {1}  # Gateway edge comes first (alphabetically, without creationTimestamp)
    [other] = _accepted(translation, "on-other")
    assert (other["status"], other["reason"]) == ("False", "Conflicted")
    assert "also attached to Gateway default/edge" in other["message"]
