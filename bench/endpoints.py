#!/usr/bin/env python3
"""Endpoint churn: 1,000 endpoint changes per second through to a real Envoy.

A `ControlPlane` (in this process) serves the 10,000-route config of `bench/scale.py` (100
Backends) to a real Envoy over ADS. For `--seconds`, it calls `set_endpoints` `--rate` times per
second on Backends picked round robin, each time with 1-4 endpoints out of a pool of loopback
addresses (what a provider does when pods come and go). Endpoint changes go out as EDS alone,
batched (`ENDPOINT_BATCH_SECONDS`).

Printed: changes issued per second, EDS pushes per second, the CPU the control plane used, how
many ClusterLoadAssignment updates Envoy applied (its `cluster.*.update_success` stats), the
other xDS pushes during the churn (must be 0), and the lag from the last change until Envoy runs
the final endpoints of every Backend (read from Envoy's `/clusters`).

Usage: .venv/bin/python bench/endpoints.py [--rate 1000] [--seconds 5] [--routes 10000] [--delta]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale  # noqa: E402  (its config generator)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def envoy_endpoints(admin: str) -> dict[str, set[tuple[str, int]]]:
    with urllib.request.urlopen(f"{admin}/clusters?format=json", timeout=5) as r:  # noqa: S310 - loopback
        data = json.loads(r.read())
    out: dict[str, set[tuple[str, int]]] = {}
    for cluster in data.get("cluster_statuses", []):
        hosts = set()
        for h in cluster.get("host_statuses", []):
            sock = h["address"]["socket_address"]
            hosts.add((sock["address"], sock["port_value"]))
        out[cluster["name"]] = hosts
    return out


def envoy_eds_updates(admin: str) -> int:
    with urllib.request.urlopen(f"{admin}/stats?filter=^cluster\\.backend/.*update_success$", timeout=5) as r:  # noqa: S310
        return sum(int(line.rsplit(": ", 1)[1]) for line in r.read().decode().splitlines() if ": " in line)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--delta", action="store_true", help="incremental xDS (only changed endpoints are sent)")
    args = parser.parse_args()
    os.environ.setdefault("SCALE_LISTEN_PORT", str(scale.free_port()))
    os.environ.setdefault("SCALE_UPSTREAM_PORT", "9")
    from meshgate.controlplane.pipeline import ControlPlane
    from meshgate.controlplane.status import ControlPlaneStatus
    from meshgate.envoy.bootstrap import BootstrapOptions, render_bootstrap
    from meshgate.envoy.process import EnvoyProcess
    from meshgate.xds.server import start_xds_server
    from meshgate.xds.snapshot import SnapshotCache
    from meshgate.xds.translator import TranslateOptions

    with tempfile.TemporaryDirectory(prefix="meshgate-bench-endpoints-") as tmp:
        config = Path(tmp) / "routes"
        scale.generate(config, args.routes)
        cache, status = SnapshotCache(), ControlPlaneStatus()
        plane = ControlPlane([str(config)], cache, status=status,
                             options=TranslateOptions(bind_address="127.0.0.1", access_log_path=None))
        await plane.reload_in_thread()
        server, xds_port = await start_xds_server(cache, status, "127.0.0.1:0")
        envoy = EnvoyProcess(render_bootstrap(BootstrapOptions(xds_port=xds_port, node_id="bench", admin_port=0,
                                                            delta=args.delta)),
                             Path(tmp) / "envoy", restart=False, log_level="warning")
        try:
            await envoy.start(wait_ready=True)
            admin = envoy.admin_url
            types = ("Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration")
            pushes = lambda: {t: status.metrics.pushes.labels(t)._value.get() for t in types}  # noqa: E731
            before_pushes, before_updates = pushes(), envoy_eds_updates(admin)
            pool = [(f"127.0.0.{i}", 8000 + j) for i in range(1, 11) for j in range(10)]
            final: dict[str, set[tuple[str, int]]] = {}
            total = int(args.rate * args.seconds)
            interval = 1.0 / args.rate
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            for i in range(total):
                b, rnd = i % scale.BACKENDS, i // scale.BACKENDS  # every round changes every Backend
                backend = f"b-{b}"
                endpoints = [pool[(b * 7 + rnd * 11 + k * 13) % len(pool)] for k in range(1 + rnd % 4)]
                plane.set_endpoints("default", backend, [(a, p, 1) for a, p in endpoints])
                final[f"backend/default/{backend}"] = set(endpoints)
                # Keep to the rate: sleep whenever we are ahead of schedule.
                ahead = t0 + (i + 1) * interval - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            issued_s = time.perf_counter() - t0
            last_change = time.perf_counter()
            while True:
                current = envoy_endpoints(admin)
                if all(current.get(c) == hosts for c, hosts in final.items()):
                    break
                if time.perf_counter() - last_change > 30:
                    raise SystemExit("Envoy did not converge within 30 s")
                await asyncio.sleep(0.005)
            lag_ms = 1000 * (time.perf_counter() - last_change)
            cpu = cpu_seconds() - cpu0
            elapsed = time.perf_counter() - t0
            after = pushes()
            eds = after["ClusterLoadAssignment"] - before_pushes["ClusterLoadAssignment"]
            others = {t: after[t] - before_pushes[t] for t in types if t != "ClusterLoadAssignment"}
            print(f"{'delta' if args.delta else 'state-of-the-world'} xDS, {args.routes:,} routes, {scale.BACKENDS} Backends; {total} endpoint changes in {issued_s:.2f} s "
                  f"({total / issued_s:.0f}/s asked {args.rate}/s)")
            print(f"  EDS pushes: {eds} ({eds / issued_s:.0f}/s); other xDS pushes during the churn: {others}")
            print(f"  Envoy applied {envoy_eds_updates(admin) - before_updates} ClusterLoadAssignment updates; "
                  f"converged on the final endpoints {lag_ms:.0f} ms after the last change")
            print(f"  control plane CPU: {cpu:.2f} s over {elapsed:.2f} s ({100 * cpu / elapsed:.0f}% of one core, "
                  "including the load generator)")
        finally:
            await envoy.stop()
            await server.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
