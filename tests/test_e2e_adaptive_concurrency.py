"""BackendTrafficPolicy `adaptiveConcurrency` (meshgate extension) through the real Envoy: a
backend that serves 4 requests at a time, 20 ms each, and queues the rest, loaded by 24 clients.

Through the route with the policy, Envoy's gradient controller sees the latency grow past the
backend's ideal one (given as `fixedValue`, so no measurement window makes the test wait) and
refuses what exceeds the limit at once with 503 "reached concurrency limit": the backend sees far
fewer requests in flight than there are clients. Through a route without it, to the same
backend, every request waits its turn and none is refused.

Assertions compare the two routes under the same load and never depend on a time measured in
the test. Every wait is bounded; one `meshgate run` for the module.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from collections import Counter

import pytest
from aiohttp import web

from harness import Meshgate, free_port, get_json, wait_until

pytestmark = pytest.mark.timeout(120)

CAPACITY = 4  # requests the backend works on at once
WORK_S = 0.02  # per request
CLIENTS = 24
LOAD_S = 3.0

CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: {port}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: slow}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {upstream}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: limited}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /limited}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: slow}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: open}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /open}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: slow}}]
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: adaptive}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: limited}}]
  timeout: {{http: {{requestTimeout: 30s}}}}
  adaptiveConcurrency:
    sampleAggregatePercentile: 90
    concurrencyLimitParams: {{maxConcurrencyLimit: 100, concurrencyUpdateInterval: 100ms}}
    minRTTCalcParams: {{fixedValue: 25ms, minConcurrency: 2, buffer: 20}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: open}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: open}}]
  timeout: {{http: {{requestTimeout: 30s}}}}
"""


class SlowBackend:
    """Serves CAPACITY requests at a time (WORK_S each); the others wait in its queue. Counts the
    requests in flight (queued or served) per path prefix, and their maximum."""

    def __init__(self) -> None:
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.inflight = 0
        self.max_inflight = 0
        self._runner: web.AppRunner | None = None
        self._slots: asyncio.Semaphore | None = None

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self._slots = asyncio.Semaphore(CAPACITY)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=256)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _handle(self, req: web.Request) -> web.Response:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            async with self._slots:
                await asyncio.sleep(WORK_S)
            return web.Response(text="done\n")
        finally:
            self.inflight -= 1

    def reset(self) -> None:
        self.max_inflight = self.inflight

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def load(port: int, path: str) -> tuple[Counter, set[bytes]]:
    """CLIENTS clients, each on its own keep-alive connection, for LOAD_S seconds: the statuses
    seen and the bodies of refused requests."""
    statuses: Counter = Counter()
    refusals: set[bytes] = set()
    lock = threading.Lock()
    deadline = time.monotonic() + LOAD_S

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while time.monotonic() < deadline:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                with lock:
                    statuses[resp.status] += 1
                    if resp.status != 200:
                        refusals.add(body)
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOAD_S + 60)
    return statuses, refusals


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("adaptive")
    backend = SlowBackend()
    mg = None
    try:
        backend.start()
        port = free_port()
        (work / "config.yaml").write_text(CONFIG.format(port=port, upstream=backend.port))
        mg = Meshgate([str(work / "config.yaml")], work).start()
        mg.port, mg.backend = port, backend
        wait_until(lambda: _status(port, "/limited") == 200 and _status(port, "/open") == 200, timeout=15,
                   what="both routes to answer")
        yield mg
    finally:
        if mg is not None:
            assert mg.stop() == 0, mg.output()
        backend.stop()


def _status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def _blocked(gw) -> int:  # noqa: ANN001
    stats = get_json(f"{gw.admin_url}/stats?format=json&filter=adaptive_concurrency")["stats"]
    return sum(s.get("value", 0) for s in stats if s.get("name", "").endswith("gradient_controller.rq_blocked"))


def test_a_route_without_the_policy_queues_every_request_in_the_backend(gw) -> None:  # noqa: ANN001
    gw.backend.reset()
    statuses, _ = load(gw.port, "/open")
    assert set(statuses) == {200}, statuses
    # Every client waits in the backend's queue: nearly all of them are in flight at once.
    assert gw.backend.max_inflight >= CLIENTS - 4, gw.backend.max_inflight
    assert _blocked(gw) == 0


def test_the_policy_refuses_what_exceeds_the_adapted_limit_at_once(gw) -> None:  # noqa: ANN001
    gw.backend.reset()
    statuses, refusals = load(gw.port, "/limited")
    assert statuses[200] > 0, statuses  # the backend still serves
    assert statuses[503] > 0, statuses  # and what it can't take is refused
    assert set(statuses) <= {200, 503}, statuses
    assert refusals == {b"reached concurrency limit"}, refusals
    assert _blocked(gw) >= statuses[503]
    # The backend's queue stays short: far fewer requests in flight than clients.
    assert gw.backend.max_inflight <= CLIENTS // 2, gw.backend.max_inflight
