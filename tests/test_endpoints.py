"""Endpoint changes from outside the config files (what the Kubernetes and Consul providers will
send as pods come and go): they reach the real Envoy as EDS alone, batched, with no route, listener
or cluster translated or pushed again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from harness import free_port

from meshgate.controlplane.pipeline import ControlPlane
from meshgate.controlplane.status import ControlPlaneStatus
from meshgate.devtools.upstreams import EchoServer
from meshgate.envoy.bootstrap import BootstrapOptions, render_bootstrap
from meshgate.envoy.process import EnvoyProcess
from meshgate.xds.server import start_xds_server
from meshgate.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SnapshotCache
from meshgate.xds.translator import TranslateOptions

pytestmark = pytest.mark.timeout(60)

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
  endpoints: [{{address: 127.0.0.1, port: {first}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]}}]
"""



async def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_endpoint_updates_reach_envoy_as_eds_alone(tmp_path: Path) -> None:
    upstreams = [EchoServer(f"pod-{i}") for i in range(3)]
    for u in upstreams:
        await u.start()
    port = free_port()
    (tmp_path / "config.yaml").write_text(CONFIG.format(port=port, first=upstreams[0].port))
    cache, status = SnapshotCache(), ControlPlaneStatus()
    plane = ControlPlane([str(tmp_path / "config.yaml")], cache, status=status,
                         options=TranslateOptions(bind_address="127.0.0.1", access_log_path=None))
    plane.reload()
    server, xds_port = await start_xds_server(cache, status, "127.0.0.1:0")
    envoy = EnvoyProcess(render_bootstrap(BootstrapOptions(xds_port=xds_port, node_id="e1", admin_port=0)),
                         tmp_path / "envoy", restart=False)
    try:
        await envoy.start(wait_ready=True)
        async with aiohttp.ClientSession() as http:
            async def served_by() -> str | None:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/") as r:
                        return r.headers.get("x-upstream") if r.status == 200 else None
                except aiohttp.ClientError:
                    return None

            assert await wait_for(served_by, what="the first upstream") == "pod-0"
            pushes_before = {t: status.metrics.pushes.labels(t.rsplit(".", 1)[-1])._value.get()
                             for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
            route_config = dict(plane.snapshot.resources[ROUTE])
            # 200 updates in a burst (scale up and down), ending on pod-2 alone.
            for i in range(200):
                plane.set_endpoints("default", "app", [("127.0.0.1", upstreams[i % 2].port, 1)])
                if i % 50 == 0:
                    await asyncio.sleep(0)
            plane.set_endpoints("default", "app", [("127.0.0.1", upstreams[2].port, 1)])
            await wait_for(lambda: _is(served_by, "pod-2"), what="Envoy to use the last endpoints")

            pushes = {t: status.metrics.pushes.labels(t.rsplit(".", 1)[-1])._value.get() - pushes_before[t]
                      for t in pushes_before}
            assert pushes[CLUSTER] == pushes[LISTENER] == pushes[ROUTE] == 0, pushes
            assert 1 <= pushes[ENDPOINT] < 50, f"201 updates should be batched, got {pushes[ENDPOINT]} EDS pushes"
            # Nothing was translated again: the very same route message objects.
            assert all(plane.snapshot.resources[ROUTE][n] is m for n, m in route_config.items())
            assert status.metrics.endpoint_updates._value.get() >= 1
            # A later reload of the files keeps the endpoints set from outside.
            plane.reload()
            await asyncio.sleep(0.2)
            assert await served_by() == "pod-2"
    finally:
        await envoy.stop()
        await server.stop(0)
        for u in upstreams:
            await u.stop()


async def _is(probe, expected: str) -> bool:  # noqa: ANN001
    return await probe() == expected
