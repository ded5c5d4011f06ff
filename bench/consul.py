#!/usr/bin/env python3
"""Consul register -> served: how long from a service instance's registration in Consul until a
request through meshgate's Envoy is answered by it.

In this process: the fake Consul agent of the tests (tests/fake_consul.py: Consul's HTTP API with
blocking queries), a `ControlPlane` with one Gateway, one route and a Backend that names the
Consul service (`spec.consul`), meshgate's Consul follower (`py-consul`, blocking queries), and
two HTTP upstreams. A real Envoy gets its config over ADS. Each round moves the service from one
upstream to the other (register the new instance, deregister the old) and sends requests (a new
connection each, every ~2 ms) until one is answered by the new instance: that time is the
register -> served latency. It includes Consul's answer to the blocking query, the EDS batch
(`ENDPOINT_BATCH_SECONDS`, 10 ms), the push and Envoy applying it.

Printed: p50, p99 and max over `--rounds`, and how many translations ran during the rounds (must
be 0: Consul changes go out as EDS alone).

Usage: .venv/bin/python bench/consul.py [--rounds 100]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This file is named like py-consul's package (`consul`): keep bench/ off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT / "tests"))

CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: {port}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: web}}
spec:
  consul: {{service: web, address: "{consul}"}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{group: meshgate.io, kind: Backend, name: web}}]}}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def upstream_of(port: int) -> str | None:
    """One request on a new connection (so Envoy picks a host afresh); the x-upstream header."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(b"GET /x HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        head = (await asyncio.wait_for(reader.read(65536), 5)).decode(errors="replace")
    except (OSError, asyncio.TimeoutError):
        return None
    finally:
        writer.close()
    for line in head.split("\r\n"):
        if line.lower().startswith("x-upstream:"):
            return line.split(":", 1)[1].strip()
    return None


def histogram_count(histogram) -> float:  # noqa: ANN001
    return next(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_count"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    from fake_consul import FakeConsul

    from meshgate.controlplane.pipeline import ControlPlane
    from meshgate.controlplane.status import ControlPlaneStatus
    from meshgate.devtools.upstreams import EchoServer
    from meshgate.envoy.bootstrap import BootstrapOptions, render_bootstrap
    from meshgate.envoy.process import EnvoyProcess
    from meshgate.providers.consul import ConsulEndpoints
    from meshgate.xds.server import start_xds_server
    from meshgate.xds.snapshot import SnapshotCache
    from meshgate.xds.translator import TranslateOptions

    agent = await FakeConsul().start()
    upstreams = [EchoServer(f"web-{i}") for i in range(2)]
    for u in upstreams:
        await u.start()
    listen = free_port()
    with tempfile.TemporaryDirectory(prefix="meshgate-bench-consul-") as tmp:
        (Path(tmp) / "config.yaml").write_text(CONFIG.format(port=listen, consul=agent.url))
        cache, status = SnapshotCache(), ControlPlaneStatus()
        plane = ControlPlane([str(Path(tmp) / "config.yaml")], cache, status=status,
                             options=TranslateOptions(bind_address="127.0.0.1", access_log_path=None))
        consul = ConsulEndpoints(plane, environ={})
        consul.install()
        agent.register("web", upstreams[0].port, id="web-0", address="127.0.0.1")
        await plane.reload_in_thread()
        server, xds_port = await start_xds_server(cache, status, "127.0.0.1:0")
        envoy = EnvoyProcess(render_bootstrap(BootstrapOptions(xds_port=xds_port, node_id="bench", admin_port=0)),
                             Path(tmp) / "envoy", restart=False, log_level="warning")
        try:
            await envoy.start(wait_ready=True)
            deadline = time.monotonic() + 30
            while await upstream_of(listen) != "web-0":
                if time.monotonic() > deadline:
                    raise SystemExit("the first instance was never served")
                await asyncio.sleep(0.05)
            translations = histogram_count(status.metrics.translation)
            latencies: list[float] = []
            for i in range(args.rounds):
                new, old = (i + 1) % 2, i % 2
                started = time.perf_counter()
                agent.register("web", upstreams[new].port, id=f"web-{new}", address="127.0.0.1")
                agent.deregister(f"web-{old}")
                while await upstream_of(listen) != f"web-{new}":
                    if time.perf_counter() - started > 10:
                        raise SystemExit(f"round {i}: web-{new} not served within 10 s")
                    await asyncio.sleep(0.002)
                latencies.append(1000 * (time.perf_counter() - started))
                await asyncio.sleep(0.05)  # rounds apart, so each is measured alone
            latencies.sort()
            p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
            extra = histogram_count(status.metrics.translation) - translations
            print(f"Consul register -> served through Envoy, {len(latencies)} rounds: "
                  f"p50 {statistics.median(latencies):.1f} ms, p99 {p(0.99):.1f} ms, max {latencies[-1]:.1f} ms")
            print(f"  translations during the rounds: {extra:.0f} (EDS alone); "
                  f"EDS updates: {status.metrics.endpoint_updates._value.get():.0f}")
        finally:
            await envoy.stop()
            await server.stop(0)
            await consul.close()
            for u in upstreams:
                await u.stop()
            await agent.stop()


if __name__ == "__main__":
    asyncio.run(main())
