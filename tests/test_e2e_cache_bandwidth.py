"""BackendTrafficPolicy `cache` (meshgate extension, Envoy's cache filter) and `bandwidthLimit`
(Envoy's bandwidth_limit filter) through the real Envoy.

One `meshgate run` for the module; the upstream is an in-process aiohttp server that counts the
requests it gets per path, so a cache hit is a request the upstream never saw. The bandwidth
limit is checked without timing a download: the bytes received in a bounded window are compared
with the unlimited route's, and Envoy's bandwidth_limit stats must show the limit enforced.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from aiohttp import web

from harness import Meshgate, free_port, get_json, request

pytestmark = pytest.mark.timeout(90)

MIB = 1024 * 1024

CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: {port}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: app}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {upstream}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - name: cached
      matches: [{{path: {{type: PathPrefix, value: /cached}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
    - name: plain
      matches: [{{path: {{type: PathPrefix, value: /plain}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
    - name: slow
      matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
    - name: fast
      matches: [{{path: {{type: PathPrefix, value: /fast}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: cached}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: cached}}]
  cache: {{}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: slow}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: slow}}]
  bandwidthLimit:
    response: {{limit: 100Ki}}
"""


class Upstream:
    """Counts requests per path. `/*/ttl/...`: cacheable for 60 s; `/*/nostore/...`: no-store;
    `/*/vary/...`: cacheable, varies on Accept-Language; `/*/big`: 1 MiB."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        n = self.hits[req.path] = self.hits.get(req.path, 0) + 1
        if req.path.endswith("/big"):
            return web.Response(body=b"x" * MIB, content_type="application/octet-stream")
        headers = {"cache-control": "max-age=60"}
        if "/nostore/" in req.path:
            headers = {"cache-control": "no-store"}
        body = f"{req.path} #{n}"
        if "/vary/" in req.path:
            headers["vary"] = "Accept-Language"
            body += f" lang={req.headers.get('accept-language', '-')}"
        return web.Response(text=body, headers=headers)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("cache-bandwidth")
    up = Upstream()
    up.start()
    mg = None
    try:
        port = free_port()
        (work / "config.yaml").write_text(CONFIG.format(port=port, upstream=up.port))
        mg = Meshgate([str(work / "config.yaml")], work).start()
        mg.port, mg.up = port, up
        yield mg
    finally:
        if mg is not None:
            assert mg.stop() == 0, mg.output()
        up.stop()


# -- cache ------------------------------------------------------------------------------------


def test_a_cacheable_response_is_served_from_the_cache(gw) -> None:  # noqa: ANN001
    first = request(gw.port, "/cached/ttl/a")
    assert first.status == 200 and first.body == b"/cached/ttl/a #1" and "age" not in first.headers
    second = request(gw.port, "/cached/ttl/a")
    assert second.body == b"/cached/ttl/a #1"  # the first answer, again
    assert gw.up.hits["/cached/ttl/a"] == 1  # the upstream saw one request
    assert "age" in second.headers and int(second.headers["age"]) >= 0  # RFC 9111 Age on a hit


def test_a_route_without_cache_always_asks_the_upstream(gw) -> None:  # noqa: ANN001
    assert request(gw.port, "/plain/ttl/a").body == b"/plain/ttl/a #1"
    assert request(gw.port, "/plain/ttl/a").body == b"/plain/ttl/a #2"
    assert gw.up.hits["/plain/ttl/a"] == 2


def test_no_store_is_not_cached(gw) -> None:  # noqa: ANN001
    assert request(gw.port, "/cached/nostore/b").body == b"/cached/nostore/b #1"
    r = request(gw.port, "/cached/nostore/b")
    assert r.body == b"/cached/nostore/b #2" and "age" not in r.headers
    assert gw.up.hits["/cached/nostore/b"] == 2


def test_a_response_with_vary_is_not_cached(gw) -> None:  # noqa: ANN001
    # Each variant would need its own entry; meshgate allows none (see docs/traffic.md#caching).
    def get(lang: str) -> bytes:
        return request(gw.port, "/cached/vary/c", headers={"Accept-Language": lang}).body

    assert get("en") == b"/cached/vary/c #1 lang=en"
    assert get("fr") == b"/cached/vary/c #2 lang=fr"
    assert get("en") == b"/cached/vary/c #3 lang=en"  # never served from the cache, never the wrong variant
    assert gw.up.hits["/cached/vary/c"] == 3


def test_the_clients_no_cache_bypasses_the_cached_copy(gw) -> None:  # noqa: ANN001
    assert request(gw.port, "/cached/ttl/d").body == b"/cached/ttl/d #1"
    r = request(gw.port, "/cached/ttl/d", headers={"Cache-Control": "no-cache"})
    assert r.status == 200 and gw.up.hits["/cached/ttl/d"] == 2  # revalidated with the upstream


def test_hits_are_told_by_age_and_envoy_keeps_no_cache_stats(gw) -> None:  # noqa: ANN001
    # Envoy 1.40's cache filter counts nothing: a hit is seen by its `age` header (and the
    # upstream not being asked). If a later Envoy adds stats, document them and test them here.
    request(gw.port, "/cached/ttl/e")
    assert "age" in request(gw.port, "/cached/ttl/e").headers
    stats = get_json(f"{gw.admin_url}/stats?format=json&filter=cache")["stats"]
    assert not [s["name"] for s in stats if "name" in s and ".cache." in s["name"]]


# -- bandwidth --------------------------------------------------------------------------------


def _bytes_in(port: int, path: str, window: float) -> int:
    """Body bytes of a GET received within `window` seconds (or all of them, if sooner)."""
    with socket.create_connection(("127.0.0.1", port), timeout=window + 5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        got, end = b"", time.monotonic() + window
        s.settimeout(0.2)
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return len(body)


def test_a_response_bandwidth_limit_slows_the_download(gw) -> None:  # noqa: ANN001
    window = 2.0
    unlimited = _bytes_in(gw.port, "/fast/big", window)
    limited = _bytes_in(gw.port, "/slow/big", window)
    assert unlimited == MIB  # the whole MiB came within the window
    # 100 KiB/s for 2 s is ~200 KiB (plus a first bucket); far less than the MiB either way.
    assert limited < MIB // 2, limited
    stats = get_json(f"{gw.admin_url}/stats?format=json&filter=bandwidth")["stats"]
    enforced = {s["name"]: s.get("value") for s in stats if s.get("name", "").endswith("response_enforced")}
    assert enforced and max(enforced.values()) >= 1, stats
