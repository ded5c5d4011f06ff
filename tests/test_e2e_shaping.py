"""BackendTrafficPolicy shaping through the real Envoy: local rate limits (`rateLimit`),
response compression (`compression`: gzip, brotli, zstd) and fault injection (`faultInjection`),
as a client sees them.

One `meshgate run` for the module; the upstream is the test's own aiohttp server. Rate-limit
buckets refill on Envoy's timer, so a burst may straddle a refill: assertions allow up to twice
the limit through and never depend on timing. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import threading
import time

import brotli
import pytest
import zstandard
from aiohttp import web

from harness import Meshgate, Response, free_port, wait_until

pytestmark = pytest.mark.timeout(120)


class Upstream:
    """An HTTP/1.1 upstream: answers every path with a small JSON body naming the path, but
    `/compress/big.json` (JSON, a few KB), `/compress/big.png` (the same bytes as an image)."""

    def __init__(self) -> None:
        self.port = 0
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _handle(self, req: web.Request) -> web.Response:
        self.requests += 1
        if req.path.endswith("/big.json"):
            return web.Response(body=BIG, content_type="application/json")
        if req.path.endswith("/big.png"):
            return web.Response(body=BIG, content_type="image/png")
        return web.json_response({"path": req.path})

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def call(port: int, path: str, *, headers: dict[str, str] | None = None, method: str = "GET",
         source: str = "127.0.0.1") -> Response:
    """One request on a fresh connection, from the loopback address `source` (127.0.0.0/8 is all
    loopback on Linux, so a test can be several clients)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


BIG = json.dumps([{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(100)]).encode()

CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: {port}}}]
---
# Every route of the Gateway: 5 requests a minute.
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: edge}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}]
  rateLimit:
    type: Local
    local:
      rules:
        - limit: {{requests: 5, unit: Minute}}
---
# The `limits` route replaces that with per-client and per-header rules.
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: limits}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: limits}}]
  rateLimit:
    type: Local
    local:
      rules:
        - clientSelectors: [{{headers: [{{name: x-user, type: Distinct}}]}}]
          limit: {{requests: 3, unit: Minute}}
        - clientSelectors: [{{headers: [{{name: x-plan, value: free}}]}}]
          limit: {{requests: 2, unit: Minute}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: per-ip}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: limits, sectionName: per-ip}}]
  rateLimit:
    type: Local
    local:
      rules:
        - clientSelectors: [{{sourceCIDR: {{type: Distinct, value: 127.0.0.0/8}}}}]
          limit: {{requests: 3, unit: Minute}}
---
# Compression; its own rate limit replaces the Gateway's (policies merge field by field).
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: compress}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: compress}}]
  rateLimit:
    local:
      rules: [{{limit: {{requests: 1000, unit: Second}}}}]
  compression:
    - {{type: Gzip, minContentLength: 100}}
    - {{type: Brotli, minContentLength: 100}}
    - {{type: Zstd, minContentLength: 100}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: fault-route}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: fault}}]
  rateLimit:
    local:
      rules: [{{limit: {{requests: 1000, unit: Second}}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: abort}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: fault, sectionName: abort}}]
  faultInjection:
    abort: {{httpStatus: 418}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: half}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: fault, sectionName: half}}]
  faultInjection:
    abort: {{httpStatus: 503, percentage: 50}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: delay}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: fault, sectionName: delay}}]
  faultInjection:
    delay: {{fixedDelay: 300ms}}
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: app}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {upstream}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: limits}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - name: per-ip
      matches: [{{path: {{type: PathPrefix, value: /per-ip}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
    - matches: [{{path: {{type: PathPrefix, value: /limits}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: compress}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /compress}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: fault}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - name: abort
      matches: [{{path: {{type: PathPrefix, value: /fault/abort}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
    - name: half
      matches: [{{path: {{type: PathPrefix, value: /fault/half}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
    - name: delay
      matches: [{{path: {{type: PathPrefix, value: /fault/delay}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: plain}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /plain}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("shaping")
    upstream = Upstream()
    mg = None
    try:
        upstream.start()
        port = free_port()
        (work / "config.yaml").write_text(CONFIG.format(port=port, upstream=upstream.port))
        mg = Meshgate([str(work / "config.yaml")], work).start()
        mg.port, mg.upstream = port, upstream
        yield mg
    finally:
        if mg is not None:
            assert mg.stop() == 0, mg.output()
        upstream.stop()


def _burst(gw, path: str, n: int, **kw) -> list[Response]:  # noqa: ANN001
    return [call(gw.port, path, **kw) for _ in range(n)]


def _check_refused(responses: list[Response], limit: int) -> None:
    """Of a quick burst against `limit` per unit: the first `limit` pass, at most `limit` more (a
    refill during the burst), every other one is Envoy's 429 with the rate-limit headers."""
    passed = [r for r in responses if r.status == 200]
    refused = [r for r in responses if r.status != 200]
    assert all(r.status == 200 for r in responses[:limit]), [r.status for r in responses]
    assert limit <= len(passed) <= 2 * limit and len(refused) == len(responses) - len(passed)
    for r in refused:
        assert r.status == 429 and r.body == b"local_rate_limited", (r.status, r.body)
        assert r.headers["x-ratelimit-limit"] == str(limit) and r.headers["x-ratelimit-remaining"] == "0"
        assert int(r.headers["retry-after"]) >= 1  # seconds until the bucket has a token again


def test_the_gateways_limit_applies_to_every_route(gw) -> None:  # noqa: ANN001
    before = gw.upstream.requests
    responses = _burst(gw, "/plain", 20)
    _check_refused(responses, 5)
    assert gw.upstream.requests - before == sum(r.status == 200 for r in responses)  # refused ones never reached it
    assert responses[0].headers["x-ratelimit-limit"] == "5"  # the draft-03 headers are on 200s too


def test_each_value_of_a_distinct_header_has_its_own_bucket(gw) -> None:  # noqa: ANN001
    _check_refused(_burst(gw, "/limits/a", 10, headers={"x-user": "alice"}), 3)
    # Bob's bucket is untouched by Alice's burst.
    assert call(gw.port, "/limits/a", headers={"x-user": "bob"}).status == 200
    # Without the header no rule counts the request, and the route's own policy has no overall
    # limit (it replaced the Gateway's rules): never refused.
    assert {r.status for r in _burst(gw, "/limits/a", 12)} == {200}


def test_an_exact_header_value_is_one_shared_bucket(gw) -> None:  # noqa: ANN001
    _check_refused(_burst(gw, "/limits/b", 8, headers={"x-plan": "free"}), 2)
    assert {r.status for r in _burst(gw, "/limits/b", 8, headers={"x-plan": "pro"})} == {200}


def test_distinct_source_cidr_limits_each_client_address(gw) -> None:  # noqa: ANN001
    _check_refused(_burst(gw, "/per-ip", 10, source="127.0.0.1"), 3)
    assert call(gw.port, "/per-ip", source="127.0.0.2").status == 200  # another client, its own bucket
    _check_refused(_burst(gw, "/per-ip", 10, source="127.0.0.3"), 3)


def test_envoy_runs_the_route_limits_and_policies_are_accepted(gw) -> None:  # noqa: ANN001
    routes = gw.dump_section("RoutesConfigDump")["dynamic_route_configs"][0]["route_config"]["virtual_hosts"][0]["routes"]
    per_ip = next(r for r in routes if r["name"].endswith("limits/rule/0/match/0"))
    config = per_ip["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    assert config["enable_retry_after_header"] is True  # set by field number (newer than xds-protos)
    assert config["max_dynamic_descriptors"] == 10000
    objects = [o for o in gw.objects() if o["kind"] == "BackendTrafficPolicy"]
    assert len(objects) == 8 and all(o["conditions"][0]["reason"] == "Accepted" for o in objects)


# -- compression ----------------------------------------------------------------------------------

_DECODE = {"gzip": gzip.decompress, "br": brotli.decompress,
           "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data)}


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_responses_are_compressed_with_the_encoding_the_client_accepts(gw, encoding: str) -> None:  # noqa: ANN001
    r = call(gw.port, "/compress/big.json", headers={"Accept-Encoding": encoding})
    assert r.status == 200 and r.headers["content-encoding"] == encoding
    assert "accept-encoding" in r.headers["vary"].lower()
    assert len(r.body) < len(BIG) and _DECODE[encoding](r.body) == BIG
    assert "content-length" not in r.headers  # streamed while compressed


def test_the_clients_preferred_encoding_wins(gw) -> None:  # noqa: ANN001
    r = call(gw.port, "/compress/big.json", headers={"Accept-Encoding": "gzip;q=0.5, zstd;q=0.1, br"})
    assert r.headers["content-encoding"] == "br" and brotli.decompress(r.body) == BIG


def test_what_is_not_compressed(gw) -> None:  # noqa: ANN001
    plain = call(gw.port, "/compress/big.json")  # no Accept-Encoding
    assert "content-encoding" not in plain.headers and plain.body == BIG
    assert "accept-encoding" in plain.headers["vary"].lower()  # caches must keep the variants apart
    small = call(gw.port, "/compress/small", headers={"Accept-Encoding": "gzip"})  # under minContentLength
    assert "content-encoding" not in small.headers and small.json == {"path": "/compress/small"}
    image = call(gw.port, "/compress/big.png", headers={"Accept-Encoding": "gzip"})  # not a listed type
    assert "content-encoding" not in image.headers and image.body == BIG
    other = call(gw.port, "/limits/x", headers={"Accept-Encoding": "gzip"})  # a route without compression
    assert "content-encoding" not in other.headers


# -- fault injection ------------------------------------------------------------------------------


def test_an_abort_is_answered_by_envoy_without_the_backend(gw) -> None:  # noqa: ANN001
    before = gw.upstream.requests
    r = call(gw.port, "/fault/abort")
    assert r.status == 418 and r.body == b"fault filter abort"
    assert gw.upstream.requests == before


def test_a_percentage_aborts_only_a_share(gw) -> None:  # noqa: ANN001
    statuses = [call(gw.port, "/fault/half").status for _ in range(40)]
    # 50%: both outcomes appear (the chance that 40 requests all get the same one is 2 in 10^12).
    assert set(statuses) == {200, 503}, statuses


def test_a_delayed_request_still_reaches_the_backend(gw) -> None:  # noqa: ANN001
    before, started = gw.upstream.requests, time.monotonic()
    r = call(gw.port, "/fault/delay")
    waited = time.monotonic() - started
    assert r.status == 200 and r.json == {"path": "/fault/delay"} and gw.upstream.requests == before + 1
    assert waited >= 0.29  # held back by the fault filter (a lower bound only: no speed assertion)
