"""BackendTrafficPolicy through the real Envoy: what a user sees when upstreams fail.

One `meshgate run` for the module; the upstreams are the test's own: in-process HTTP servers that
fail on demand, count their hits and their concurrency (`Upstream`), a gRPC server that reports
the deadline it was given, and two echo upstreams run as processes, so that one can be killed
(SIGKILL, by PID) and started again. Every wait is bounded; nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import threading
import time

import grpc
import pytest
from aiohttp import web

from harness import EchoProcess, Meshgate, free_port, request, wait_until

pytestmark = pytest.mark.timeout(120)

_FAIL = re.compile(r"/fail/([\w-]+)/(\d+)")  # first N hits of a key answer 503
_SLOW_FIRST = re.compile(r"/slowfirst/([\w-]+)/(\d+)")  # the first hit of a key sleeps MS
_SLEEP = re.compile(r"/sleep/(\d+)")


class Upstream:
    """An HTTP/1.1 upstream in the test's event loop thread. `always_fail`: every answer is 500."""

    def __init__(self, name: str, always_fail: bool = False) -> None:
        self.name, self.always_fail = name, always_fail
        self.hits: dict[str, int] = {}
        self.requests = 0
        self.inflight = self.max_inflight = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, req: web.Request) -> web.Response:
        self.requests += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            status, count = 200, 0
            if m := _FAIL.search(req.path):
                count = self.hits[m[1]] = self.hits.get(m[1], 0) + 1
                status = 503 if count <= int(m[2]) else 200
            if m := _SLOW_FIRST.search(req.path):
                count = self.hits[m[1]] = self.hits.get(m[1], 0) + 1
                if count == 1:
                    await asyncio.sleep(int(m[2]) / 1000)
            if m := _SLEEP.search(req.path):
                await asyncio.sleep(int(m[1]) / 1000)
            if self.always_fail:
                status = 500
            body = {"upstream": self.name, "hits": count, "headers": {k.lower(): v for k, v in req.headers.items()}}
            return web.json_response(body, status=status, headers={"x-upstream": self.name})
        finally:
            self.inflight -= 1


class DeadlineService:
    """gRPC upstream: `test.Deadline/Remaining` answers with the seconds left of the call's deadline."""

    def __init__(self) -> None:
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        async def remaining(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            left = context.time_remaining()
            return b"none" if left is None else f"{left:.3f}".encode()

        handler = grpc.method_handlers_generic_handler("test.Deadline", {
            "Remaining": grpc.unary_unary_rpc_method_handler(remaining)})
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0.2)


class Loop:
    """An asyncio loop in a thread, for the in-process upstreams."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10):  # noqa: ANN001, ANN201
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: {port}}}]
---
# Shows x-envoy-overloaded to clients and sends x-envoy-expected-rq-timeout-ms upstream.
apiVersion: meshgate.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {{name: edge}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}]
  headers: {{enableEnvoyHeaders: true}}
---
# The route's policy: retry 503s three times, quickly. Rules below override parts of it.
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: retries}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}}]
  retry:
    numRetries: 3
    retryOn: {{triggers: [retriable-status-codes], httpStatusCodes: [503]}}
    perRetry:
      backOff: {{baseInterval: 10ms, maxInterval: 50ms}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: one-retry}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: one-retry}}]
  retry: {{numRetries: 1}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: per-try}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: per-try}}]
  retry:
    numRetries: 1
    retryOn: {{triggers: [reset, gateway-error]}}
    perRetry: {{timeout: 300ms}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: timeout}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: timeout}}]
  timeout:
    http: {{requestTimeout: 500ms}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: breaker}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: breaker}}]
  circuitBreaker: {{maxConnections: 1, maxParallelRequests: 1, maxPendingRequests: 2}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: active}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: active}}]
  retry: {{numRetries: 0}}
  healthCheck:
    active:
      type: HTTP
      http: {{path: /healthz}}
      interval: 200ms
      timeout: 200ms
      unhealthyThreshold: 2
      healthyThreshold: 1
    panicThreshold: 0
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: passive}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: passive}}]
  retry: {{numRetries: 0}}
  healthCheck:
    passive: {{consecutive5XxErrors: 3, baseEjectionTime: 60s, maxEjectionPercent: 50, interval: 1s}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: sticky}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: sticky}}]
  loadBalancer: {{type: ConsistentHash, consistentHash: {{type: Cookie, cookie: {{name: session, ttl: 1h}}}}}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: grpc}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: GRPCRoute, name: deadline}}]
  timeout:
    http: {{requestTimeout: 2s}}
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: flaky}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {flaky}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: slow}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {slow}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: pair}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {hc1}}}, {{address: 127.0.0.1, port: {hc2}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: mixed}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {good}}}, {{address: 127.0.0.1, port: {bad}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: grpc}}
spec:
  protocol: GRPC
  endpoints: [{{address: 127.0.0.1, port: {grpc}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - name: retry
      matches: [{{path: {{type: PathPrefix, value: /retry}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: flaky}}]
    - name: one-retry
      matches: [{{path: {{type: PathPrefix, value: /one-retry}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: flaky}}]
    - name: per-try
      matches: [{{path: {{type: PathPrefix, value: /per-try}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: flaky}}]
    - name: timeout
      matches: [{{path: {{type: PathPrefix, value: /timeout}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: flaky}}]
    - name: breaker
      matches: [{{path: {{type: PathPrefix, value: /breaker}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: slow}}]
    - name: active
      matches: [{{path: {{type: PathPrefix, value: /active}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: pair}}]
    - name: passive
      matches: [{{path: {{type: PathPrefix, value: /passive}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: mixed}}]
    - name: sticky
      matches: [{{path: {{type: PathPrefix, value: /sticky}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: pair}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: deadline}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{method: {{service: test.Deadline}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: grpc}}]
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("resilience")
    loop = Loop()
    ups = {name: Upstream(name, always_fail=name == "bad") for name in ("flaky", "slow", "good", "bad")}
    grpc_up = DeadlineService()
    pair = [EchoProcess("hc-1", free_port()), EchoProcess("hc-2", free_port())]
    mg = None
    try:
        for up in (*ups.values(), grpc_up):
            loop.run(up.start())
        for p in pair:
            p.start()
        port = free_port()
        (work / "config.yaml").write_text(CONFIG.format(
            port=port, flaky=ups["flaky"].port, slow=ups["slow"].port, good=ups["good"].port, bad=ups["bad"].port,
            hc1=pair[0].port, hc2=pair[1].port, grpc=grpc_up.port))
        mg = Meshgate([str(work / "config.yaml")], work).start()
        mg.port, mg.ups, mg.pair, mg.grpc = port, ups, pair, grpc_up
        # Active health checks have run once for both endpoints: both serve.
        wait_until(lambda: {request(port, "/active").upstream for _ in range(4)} == {"hc-1", "hc-2"},
                   timeout=15, what="both health-checked endpoints to serve")
        yield mg
    finally:
        if mg is not None:
            assert mg.stop() == 0, mg.output()
        for p in pair:
            p.kill()
        for up in (*ups.values(), grpc_up):
            loop.run(up.stop())
        loop.close()


# -- retries ------------------------------------------------------------------------------------


def test_retries_turn_a_flaky_upstreams_503s_into_a_200(gw) -> None:  # noqa: ANN001
    r = request(gw.port, "/retry/fail/a/2")
    assert r.status == 200, r.body
    assert r.json["hits"] == 3 and gw.ups["flaky"].hits["a"] == 3  # two 503s retried, the third try answered


def test_retries_give_up_after_num_retries(gw) -> None:  # noqa: ANN001
    # The rule's policy overrides numRetries (1) and inherits the route's retryOn: 2 tries, then the 503.
    r = request(gw.port, "/one-retry/fail/b/5")
    assert r.status == 503 and gw.ups["flaky"].hits["b"] == 2


def test_a_post_is_not_retried_by_default(gw) -> None:  # noqa: ANN001
    r = request(gw.port, "/retry/fail/c/1", method="POST", body=b"order")
    assert r.status == 503 and gw.ups["flaky"].hits["c"] == 1  # never sent twice
    assert request(gw.port, "/retry/fail/c2/1", method="PUT", body=b"x").status == 200  # PUT is idempotent


def test_per_try_timeout_cuts_a_slow_attempt_and_retries(gw) -> None:  # noqa: ANN001
    r = request(gw.port, "/per-try/slowfirst/d/3000")
    assert r.status == 200 and gw.ups["flaky"].hits["d"] == 2  # the first try was cut off at 300 ms
    r = request(gw.port, "/per-try/sleep/3000/fail/e/0")
    assert r.status == 504 and gw.ups["flaky"].hits["e"] == 2  # both tries timed out


# -- timeouts -----------------------------------------------------------------------------------


def test_request_timeout_answers_504_and_tells_the_upstream(gw) -> None:  # noqa: ANN001
    assert request(gw.port, "/timeout/sleep/3000").status == 504
    r = request(gw.port, "/timeout/ok")
    assert r.status == 200 and r.json["headers"]["x-envoy-expected-rq-timeout-ms"] == "500"


def test_grpc_deadline_is_capped_and_reaches_the_upstream(gw) -> None:  # noqa: ANN001
    with grpc.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
        call = channel.unary_unary("/test.Deadline/Remaining")
        capped = float(call(b"", timeout=30))  # the client allows 30 s; the policy caps it at 2 s
        shorter = float(call(b"", timeout=1))  # a shorter client deadline is kept
    # grpc-timeout is sent in whole units, rounded up: allow a few ms over the client's deadline.
    assert 0 < capped <= 2.0 and 0 < shorter < 1.1


# -- circuit breaker, backpressure --------------------------------------------------------------


def test_circuit_breaker_bounds_the_queue_and_fails_fast(gw) -> None:  # noqa: ANN001
    """8 concurrent requests to an upstream that takes 1.5 s, with 1 connection, 1 request in
    flight and 2 pending allowed: the upstream never sees more than one at a time, at most 3 are
    served, the rest are refused at once with 503 and x-envoy-overloaded."""
    slow = gw.ups["slow"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: request(gw.port, "/breaker/sleep/1500", timeout=20), range(8)))
    served = [r for r in responses if r.status == 200]
    overloaded = [r for r in responses if r.status == 503]
    assert len(served) + len(overloaded) == 8
    assert 1 <= len(served) <= 3 and len(overloaded) >= 5
    assert all(r.headers.get("x-envoy-overloaded") == "true" for r in overloaded)
    assert slow.max_inflight == 1 and slow.requests == len(served)  # refused ones never reached it


# -- health checks ------------------------------------------------------------------------------


def _load(port: int, stop: threading.Event, log: list) -> None:
    while not stop.is_set():
        try:
            r = request(port, "/active", timeout=5)
            log.append((r.status, r.upstream))
        except OSError as exc:
            log.append((0, repr(exc)))
        time.sleep(0.01)


def test_active_health_check_fails_over_and_recovers_under_load(gw) -> None:  # noqa: ANN001
    """A request loop runs while hc-1 is killed and started again. Failed requests are only those
    that reached hc-1 before its health checks failed; then every request goes to hc-2; once hc-1
    is back (and passes a check), it serves again."""
    stop, log = threading.Event(), []
    loader = threading.Thread(target=_load, args=(gw.port, stop, log), daemon=True)
    loader.start()
    try:
        wait_until(lambda: len(log) > 20, timeout=10, what="the request loop to run")
        killed_at = len(log)  # before the kill: a request in flight during it may fail
        gw.pair[0].kill()
        # Ejected: 30 requests in a row answered by hc-2.
        wait_until(lambda: len(log) > killed_at + 30 and all(
            entry == (200, "hc-2") for entry in log[-30:]), timeout=15, what="hc-1 to be ejected")
        failed = [e for e in log[killed_at:] if e[0] != 200]
        ejected_at = len(log)
        gw.pair[0].start()
        wait_until(lambda: any(u == "hc-1" for _, u in log[ejected_at:]), timeout=15, what="hc-1 to serve again")
        recovered_at = len(log)
        wait_until(lambda: len(log) > recovered_at + 10, timeout=10, what="more requests")
    finally:
        stop.set()
        loader.join(10)
    print(f"requests: {len(log)}, failed while hc-1 was being ejected: {len(failed)}")
    assert all(e[0] == 200 for e in log[:killed_at]), log[:killed_at]  # before the kill
    # Failures only while the health checks caught up (2 failed checks, 200 ms apart): Envoy's own
    # 503 for a refused connection, no upstream answering. Generous bound, not a speed check.
    assert all(e == (503, None) for e in failed) and len(failed) < 200
    assert all(e[0] == 200 for e in log[ejected_at:]), log[ejected_at:]  # no failures during the recovery
    assert {u for _, u in log[recovered_at:]} == {"hc-1", "hc-2"}


def test_outlier_detection_ejects_the_endpoint_answering_5xx(gw) -> None:  # noqa: ANN001
    results = [request(gw.port, "/passive").upstream for _ in range(10)]
    assert results.count("bad") <= 3  # 3 consecutive 5xx eject it
    assert [request(gw.port, "/passive").status for _ in range(20)] == [200] * 20
    assert gw.ups["bad"].requests == 3


def test_session_affinity_by_cookie(gw) -> None:  # noqa: ANN001
    first = request(gw.port, "/sticky")
    cookie = first.headers["set-cookie"].split(";")[0]  # Envoy made one: the client had none
    assert cookie.startswith("session=")
    pinned = {request(gw.port, "/sticky", headers={"Cookie": cookie}).upstream for _ in range(10)}
    assert pinned == {first.upstream}


# -- what Envoy runs ----------------------------------------------------------------------------


def test_envoy_runs_the_cluster_variants(gw) -> None:  # noqa: ANN001
    clusters = {c["cluster"]["name"]: c["cluster"] for c in gw.dump_section("ClustersConfigDump")["dynamic_active_clusters"]}
    pair = [c for n, c in clusters.items() if n.startswith("backend/default/pair/policy-") and "health_checks" in c]
    assert len(pair) == 1 and pair[0]["health_checks"][0]["no_traffic_interval"] == "0.200s"
    breaker = next(c for n, c in clusters.items() if n.startswith("backend/default/slow/policy-"))
    assert breaker["circuit_breakers"]["thresholds"][0]["max_pending_requests"] == 2
    assert "backend/default/flaky" in clusters  # retries and timeouts alone need no variant
    objects = {o["name"]: o for o in gw.objects() if o["kind"] == "BackendTrafficPolicy"}
    assert len(objects) == 9 and all(o["conditions"][0]["reason"] == "Accepted" for o in objects.values())
    _ = json  # (kept for debugging dumps)
