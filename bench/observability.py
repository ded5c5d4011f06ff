#!/usr/bin/env python3
"""What observability costs the data plane: tracing at 1% and 100% sampling, and the stats listener
scraped every second, against plain Envoy and meshgate without either, in one run, alternating round
by round (bench/proxy.py's method: Envoy pinned to CPU 0; nginx, wrk, the OTLP receiver and
meshgate's Python on CPU 1). At 100% the receiver (Python, on wrk's CPU) decodes every span: that
row is a lower bound of what Envoy alone would do against a collector on another machine.

  B           plain Envoy: router only (bench/static-envoy.yaml)
  M           meshgate, no tracing, stats listener not scraped
  M-trace1    meshgate, OTLP tracing at 1% (OTEL_TRACES_SAMPLER_ARG=0.01) to a real OTLP receiver
  M-trace100  meshgate, OTLP tracing of every request
  M-scraped   meshgate, no tracing; /stats/prometheus fetched every second during the run

Every meshgate runs with `--access-log off` (bench/proxy.py measures the access log). Target
(observability issue): ratios against B, printed; tracing at 1% and a scraped stats listener
should cost no more than a few percent.

Usage: .venv/bin/python bench/observability.py [--rounds 3] [--duration 10] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc  # noqa: E402

import proxy  # noqa: E402
from _common import Processes, get_status, free_port, nginx_command, nginx_config, sigterm_as_interrupt, wait_http_200  # noqa: E402
from security import wrk  # noqa: E402

LABELS = {
    "B": "B plain Envoy (router only)",
    "M": "M meshgate, no tracing",
    "M-trace1": "M meshgate, tracing 1%",
    "M-trace100": "M meshgate, tracing 100%",
    "M-scraped": "M meshgate, /stats/prometheus scraped every 1 s",
}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver that counts the spans it gets."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 - the gRPC method's name
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


class Scraper:
    """Fetches a Prometheus endpoint every second while `on` (the M-scraped rounds)."""

    def __init__(self, url: str) -> None:
        self.url, self.on, self.scrapes, self.bytes = url, threading.Event(), 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            if self.on.is_set():
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    self.bytes += len(resp.read())
                self.scrapes += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def start_meshgate(procs: Processes, tmp: Path, name: str, upstream_port: int, commands: list[str],
                   env: dict[str, str]) -> dict:
    run = proxy.start_meshgate(procs, tmp, upstream_port, commands, name=name, env=env,
                               extra=("--access-log", "off", "--stats-address", "127.0.0.1:0"))
    metrics = (get_status(run["status_url"]) or {}).get("metrics", {})
    return {"port": run["port"], "pid": run["envoy_pid"], "stats_url": metrics.get("envoy")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s: checks the benchmark runs")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    sigterm_as_interrupt()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-observability-"))
    procs = Processes()
    commands: list[str] = []
    receiver = Receiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    scraper = None
    try:
        upstream_port = free_port()
        nginx = procs.start("nginx", nginx_command(tmp, nginx_config(tmp, upstream_port), proxy.CLIENT_CPU), log=tmp / "nginx.out")
        wait_http_200(f"http://127.0.0.1:{upstream_port}/", 10, nginx, "nginx")
        port, pid = proxy.start_static_envoy(procs, tmp, "B", upstream_port, None, commands)
        systems = {"B": {"port": port, "pid": pid}}
        otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}"}
        variants = {"M": {}, "M-trace1": {**otlp, "OTEL_TRACES_SAMPLER_ARG": "0.01"},
                    "M-trace100": {**otlp, "OTEL_TRACES_SAMPLER_ARG": "1"}, "M-scraped": {}}
        for name, env in variants.items():
            systems[name] = start_meshgate(procs, tmp, name, upstream_port, commands, env)
        scraper = Scraper(systems["M-scraped"]["stats_url"])
        results: dict[str, list[dict]] = {name: [] for name in systems}
        spans: dict[str, int] = {name: 0 for name in systems}
        for r in range(args.rounds):
            for name, system in systems.items():
                if name == "M-scraped":
                    scraper.on.set()
                before = receiver.spans
                res = wrk(procs, tmp, system["port"], {}, args.duration, args.connections, system["pid"])
                scraper.on.clear()
                spans[name] += receiver.spans - before  # Envoy flushes every 5 s: roughly this round's
                results[name].append(res)
                print(f"round {r + 1}/{args.rounds} {name:<11} {res['rps']:>9,.0f} req/s  p99 {res['p99_ms']:.2f} ms", flush=True)
        s = proxy.summarize(results)
        print()
        print(f"observability: {args.rounds} round(s) x {args.duration:g} s, wrk -t1 -c{args.connections}, GET /; "
              f"Envoy --concurrency 1 on CPU {proxy.ENVOY_CPU}")
        print(f"{'config':<50} {'req/s (median)':>15} {'x plain':>8} {'x M':>6} {'p99 ms':>7} {'x plain p99':>12} {'Envoy us/req':>13}")
        for name, v in s.items():
            print(f"{LABELS[name]:<50} {v['rps']:>15,.0f} {v['rps'] / s['B']['rps']:>8.2f} {v['rps'] / s['M']['rps']:>6.2f} "
                  f"{v['p99']:>7.2f} {v['p99'] / s['B']['p99']:>12.2f} {v['us_per_req']:>13.1f}")
        print()
        print(f"spans received: tracing 1% {spans['M-trace1']:,}, tracing 100% {spans['M-trace100']:,} "
              f"(Envoy exports every 5 s: the last seconds of a round count in the next); "
              f"scrapes {scraper.scrapes} ({scraper.bytes / max(scraper.scrapes, 1) / 1024:.0f} KiB each)")
        print()
        print("commands:")
        for c in commands:
            print(f"  {c}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        if scraper is not None:
            scraper.close()
        procs.stop_all()
        server.stop(grace=1).wait(5)


if __name__ == "__main__":
    sys.exit(main())
