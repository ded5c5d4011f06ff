#!/usr/bin/env python3
"""Kubernetes mode at scale: `meshgate xds --kubernetes` against the fake API server
(tests/fake_kube.py: the real list/watch wire protocol, so kubernetes-asyncio runs unmodified)
and a real Envoy from `meshgate bootstrap`.

1. **start**: N HTTPRoutes (Exact /r/<i>) over 100 Services, each with an EndpointSlice, are in
   the "cluster" before meshgate starts; seconds from process start until /readyz says the Envoy
   ACKed the config, and meshgate's peak RSS.
2. **endpoint churn**: for `--seconds`, `--rate` EndpointSlice changes per second (a slice's
   endpoints replaced, round robin over the Services), plus one probe change every 0.2 s on a
   Service of its own: the delay from that change in the API server until Envoy's `/clusters`
   shows the new endpoint (p50, p99), the control plane's CPU during the churn, and the
   translations it ran (must be 0: endpoints go out as EDS alone).

Usage: .venv/bin/python bench/kubernetes.py [--routes 10000] [--rate 1000] [--seconds 30] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import ROOT, Processes, free_port, proc_mem_mb, sigterm_as_interrupt  # noqa: E402
from fake_kube import FakeKube  # noqa: E402

GW = "gateway.networking.k8s.io/v1"
SLICE = "discovery.k8s.io/v1"
SERVICES = 100


class Cluster:
    """The fake API server on an event loop of its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.kube = FakeKube(history=200_000)
        self.call(self.kube.start())

    def call(self, coroutine):  # noqa: ANN001, ANN201
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def do(self, function, *args):  # noqa: ANN001, ANN002, ANN201
        async def run():  # noqa: ANN202
            return function(*args)
        return self.call(run())

    def close(self) -> None:
        self.call(self.kube.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)


def endpoint_slice(service: str, ports: list[int]) -> dict:
    return {"apiVersion": SLICE, "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-slice", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": ports[0], "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"127.0.0.{1 + i}"], "conditions": {"ready": True}} for i in range(len(ports))]}


def populate(cluster: Cluster, routes: int, http_port: int) -> None:
    kube = cluster.kube

    def fill() -> None:
        kube.create({"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "meshgate"},
                     "spec": {"controllerName": "meshgate.io/gateway-controller"}})
        kube.create({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "edge"},
                     "spec": {"gatewayClassName": "meshgate", "listeners": [{"name": "http", "protocol": "HTTP", "port": http_port}]}})
        for s in [*range(SERVICES), "probe"]:
            name = f"svc-{s}"
            kube.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
            kube.create(endpoint_slice(name, [10000]))
        for i in range(routes):
            kube.create({"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": f"r-{i}"},
                         "spec": {"parentRefs": [{"name": "edge"}],
                                  "rules": [{"matches": [{"path": {"type": "Exact", "value": f"/r/{i}"}}],
                                             "backendRefs": [{"name": f"svc-{i % SERVICES}", "port": 80}]}]}})
        kube.create({"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "probe"},
                     "spec": {"parentRefs": [{"name": "edge"}],
                              "rules": [{"matches": [{"path": {"type": "Exact", "value": "/probe"}}],
                                         "backendRefs": [{"name": "svc-probe", "port": 80}]}]}})

    async def run() -> None:
        fill()
    cluster.call(run())


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback
            return r.status
    except Exception:  # noqa: BLE001 - not up yet
        return 0


def translations(status_url: str) -> float:
    text = urllib.request.urlopen(f"{status_url}/metrics", timeout=5).read().decode()  # noqa: S310
    m = re.search(r"^meshgate_translation_seconds_count (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_port_in_envoy(admin: str, port: int) -> bool:
    text = urllib.request.urlopen(f"{admin}/clusters", timeout=2).read().decode()  # noqa: S310
    return f"service/default/svc-probe/80::127.0.0.1:{port}::" in text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--routes", type=int, default=10_000)
    ap.add_argument("--rate", type=int, default=1000, help="EndpointSlice changes per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--quick", action="store_true", help="1,000 routes, 100 changes/s for 3 s")
    args = ap.parse_args()
    if args.quick:
        args.routes, args.rate, args.seconds = 1000, 100, 3.0
    sigterm_as_interrupt()
    from meshgate.envoy.process import find_envoy

    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-kube-"))
    procs = Processes()
    cluster = Cluster()
    try:
        http, xds, status, admin = free_port(), free_port(), free_port(), free_port()
        t = time.monotonic()
        populate(cluster, args.routes, http)
        print(f"{args.routes:,} HTTPRoutes, {SERVICES} Services in the API server ({time.monotonic() - t:.1f} s)", flush=True)
        (tmp / "kubeconfig").write_text(cluster.kube.kubeconfig())
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        t0 = time.monotonic()
        mg = procs.start("meshgate xds", [sys.executable, "-m", "meshgate", "xds", "--kubernetes", "--kubeconfig",
                                          str(tmp / "kubeconfig"), "--xds-address", f"127.0.0.1:{xds}",
                                          "--status-address", f"127.0.0.1:{status}", "--gateway-address", "127.0.0.1"],
                         log=tmp / "xds.out", env=env)
        bootstrap = subprocess.run([sys.executable, "-m", "meshgate", "bootstrap", "--xds-address", f"127.0.0.1:{xds}",
                                    "--node-id", "bench", "--admin-port", str(admin)], cwd=ROOT, capture_output=True,
                                   text=True, timeout=30, check=True).stdout
        (tmp / "bootstrap.json").write_text(bootstrap)
        envoy = procs.start("envoy", [find_envoy(), "-c", str(tmp / "bootstrap.json"), "--use-dynamic-base-id",
                                      "--concurrency", "1", "-l", "warning"], log=tmp / "envoy.out")
        status_url = f"http://127.0.0.1:{status}"
        hwm = 0.0
        while http_status(f"{status_url}/readyz") != 200:
            if time.monotonic() - t0 > 300 or mg.poll() is not None:
                raise RuntimeError(f"not ready; meshgate log:\n{(tmp / 'xds.out').read_text()[-3000:]}")
            hwm = max(hwm, proc_mem_mb(mg.pid).get("VmHWM", 0.0))
            time.sleep(0.02)
        start_s = time.monotonic() - t0
        hwm = max(hwm, proc_mem_mb(mg.pid).get("VmHWM", 0.0))
        print(f"start: all ACKed {start_s:.2f} s after process start; meshgate peak RSS {hwm:.0f} MB, "
              f"Envoy RSS {proc_mem_mb(envoy.pid).get('VmRSS', 0):.0f} MB", flush=True)

        # -- churn ------------------------------------------------------------------------------
        admin_url = f"http://127.0.0.1:{admin}"
        translations_before, cpu_before = translations(status_url), cpu_seconds(mg.pid)
        delays: list[float] = []
        stop = threading.Event()
        changes = [0]

        def churn() -> None:
            interval = 1.0 / args.rate
            nxt = time.monotonic()
            i = 0
            while not stop.is_set():
                service = f"svc-{i % SERVICES}"
                cluster.do(cluster.kube.apply, endpoint_slice(service, [20000 + i % 1000] * (1 + i % 3)))
                changes[0] += 1
                i += 1
                nxt += interval
                pause = nxt - time.monotonic()
                if pause > 0:
                    time.sleep(pause)

        worker = threading.Thread(target=churn, daemon=True)
        t_churn = time.monotonic()
        worker.start()
        port = 30000
        while time.monotonic() - t_churn < args.seconds:
            port += 1
            t = time.monotonic()
            cluster.do(cluster.kube.apply, endpoint_slice("svc-probe", [port]))
            while not probe_port_in_envoy(admin_url, port):
                if time.monotonic() - t > 10:
                    raise RuntimeError("a probe change did not reach Envoy within 10 s")
                time.sleep(0.002)
            delays.append((time.monotonic() - t) * 1000)
            time.sleep(max(0.0, 0.2 - (time.monotonic() - t)))
        stop.set()
        worker.join(10)
        elapsed = time.monotonic() - t_churn
        cpu = (cpu_seconds(mg.pid) - cpu_before) / elapsed * 100
        extra = translations(status_url) - translations_before
        delays.sort()
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        print()
        print(f"endpoint churn: {changes[0] / elapsed:,.0f} EndpointSlice changes/s for {elapsed:.0f} s "
              f"(asked {args.rate:,}/s; the fake API server in this process bounds it)")
        print(f"  change in the API server -> Envoy runs it: p50 {statistics.median(delays):.0f} ms, "
              f"p99 {p99:.0f} ms, max {delays[-1]:.0f} ms ({len(delays)} probes)")
        print(f"  control plane CPU during the churn: {cpu:.0f}% of one core; translations run: {extra:.0f} (EDS only)")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
