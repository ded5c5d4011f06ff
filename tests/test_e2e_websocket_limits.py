"""WebSocket limits of a BackendTrafficPolicy, through the real Envoy: a cap on concurrent
upgraded connections (`circuitBreaker.maxParallelRequests`: an upgraded socket holds one request
for its life) and a maximum duration (`timeout.http.maxStreamDuration`, meshgate's extension:
Envoy's route `max_stream_duration`; the cluster's `maxConnectionDuration` only drains, and an
upstream connection carrying a WebSocket is kept until the socket ends, which is checked too).

One `meshgate run` for the module; the upstream is tests/ws_upstream.py (aiohttp echo) in a
subprocess. Every wait is bounded; nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
import websockets

from harness import ROOT, Meshgate, free_port, get_json

pytestmark = pytest.mark.timeout(90)

CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: {port}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: ws}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {ws}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - name: capped
      matches: [{{path: {{type: PathPrefix, value: /capped}}}}]
      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /ws}}}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: ws}}]
    - name: short
      matches: [{{path: {{type: PathPrefix, value: /short}}}}]
      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /ws}}}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: ws}}]
    - name: drained
      matches: [{{path: {{type: PathPrefix, value: /drained}}}}]
      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /ws}}}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: ws}}]
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: capped}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: capped}}]
  circuitBreaker: {{maxParallelRequests: 2, maxPendingRequests: 1}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: short}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: short}}]
  timeout: {{http: {{maxStreamDuration: 1s}}}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: drained}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: drained}}]
  timeout: {{http: {{maxConnectionDuration: 1s}}}}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("websocket-limits")
    ws_port, port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, str(ROOT / "tests" / "ws_upstream.py"), str(ws_port)],
                                stdout=subprocess.PIPE, stderr=(work / "ws.stderr").open("wb"), stdin=subprocess.DEVNULL)
    mg = None
    try:
        assert upstream.stdout.readline() == b"ready\n", (work / "ws.stderr").read_text()
        (work / "config.yaml").write_text(CONFIG.format(port=port, ws=ws_port))
        mg = Meshgate([str(work / "config.yaml")], work).start()
        mg.port = port
        yield mg
    finally:
        if mg is not None:
            assert mg.stop() == 0, mg.output()
        upstream.terminate()
        try:
            upstream.wait(timeout=5)
        except subprocess.TimeoutExpired:
            upstream.kill()
            upstream.wait(timeout=5)


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _open(url: str) -> websockets.ClientConnection:
    ws = await websockets.connect(url, ping_interval=None, open_timeout=5)
    await ws.send("hello")
    assert await asyncio.wait_for(ws.recv(), 5) == "hello"
    return ws


def test_the_third_concurrent_websocket_is_refused_when_the_cap_is_two(gw) -> None:  # noqa: ANN001
    url = f"ws://127.0.0.1:{gw.port}/capped/echo"

    async def scenario():
        first, second = await _open(url), await _open(url)
        try:
            with pytest.raises(websockets.InvalidStatus) as refused:
                await _open(url)
            status = refused.value.response.status_code, refused.value.response.headers.get("x-envoy-overloaded")
            # The two open sockets still work; closing one frees its place.
            await second.send("still")
            assert await asyncio.wait_for(second.recv(), 5) == "still"
            await first.close()
            deadline = time.monotonic() + 10
            while True:  # Envoy releases the request slot once the upstream side is closed too
                try:
                    third = await _open(url)
                    break
                except websockets.InvalidStatus:
                    assert time.monotonic() < deadline, "the freed slot was never given to a new socket"
                    await asyncio.sleep(0.1)
            await third.close()
            return status
        finally:
            await second.close()
            await first.close()

    status, _ = run(scenario())
    assert status == 503  # Envoy's circuit breaker (response flag UO)
    stats = get_json(f"{gw.admin_url}/stats?format=json&filter=overflow")["stats"]
    assert any(s.get("value", 0) >= 1 for s in stats if "/policy-" in s.get("name", "")), stats


def test_a_websocket_is_closed_after_max_stream_duration(gw) -> None:  # noqa: ANN001
    async def scenario():
        ws = await _open(f"ws://127.0.0.1:{gw.port}/short/echo")
        opened = time.monotonic()
        try:
            while time.monotonic() - opened < 10:  # bounded: 10 x the limit
                await ws.send("ping")
                await asyncio.wait_for(ws.recv(), 5)
                await asyncio.sleep(0.1)
        except websockets.ConnectionClosed:
            return "closed", time.monotonic() - opened
        finally:
            await ws.close()
        return "open", time.monotonic() - opened

    state, lasted = run(scenario())
    assert state == "closed"
    assert lasted >= 0.9  # not before the limit (1 s); no upper bound asserted


def test_max_connection_duration_drains_and_leaves_an_open_websocket_alone(gw) -> None:  # noqa: ANN001
    # The cluster's max_connection_duration (1 s here) drains the upstream connection: it closes
    # when its request ends, and an upgraded connection's request ends with the socket.
    async def scenario():
        ws = await _open(f"ws://127.0.0.1:{gw.port}/drained/echo")
        try:
            opened = time.monotonic()
            while time.monotonic() - opened < 2.5:
                await ws.send("ping")
                assert await asyncio.wait_for(ws.recv(), 5) == "ping"
                await asyncio.sleep(0.1)
            return "open"
        finally:
            await ws.close()

    assert run(scenario()) == "open"
