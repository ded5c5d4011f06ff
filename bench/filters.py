#!/usr/bin/env python3
"""Filter chains a user enables together: meshgate's generated config against a hand-written
Envoy config with the same features, in one run, alternating round by round (bench/proxy.py's
method: Envoy pinned to CPU 0; nginx, wrk and meshgate's Python on CPU 1).

  B          plain Envoy: router only (bench/static-envoy.yaml)
  H-shaping  hand-written: gzip compressor + CORS + a local rate limit (never reached)
  M-shaping  meshgate: BackendTrafficPolicy compression + rateLimit, HTTPRoute CORS filter
  H-resil    hand-written: retries, circuit breakers, active HTTP health checks, outlier detection
  M-resil    meshgate: BackendTrafficPolicy retry + circuitBreaker + healthCheck (active, passive)

Requests ask for a 1 KiB body (so gzip works) with `Accept-Encoding: gzip` and an allowed
`Origin`. meshgate runs with `--access-log off --route-stats off` (the hand-written configs have
neither). Target (traffic issue): M ≥ 0.97× H requests/s and ≤ 1.10× H p99, per chain.

Usage: .venv/bin/python bench/filters.py [--rounds 3] [--duration 10] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import string
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxy  # noqa: E402
from _common import BENCH, Processes, fmt_cmd, free_port, nginx_command, nginx_config, sigterm_as_interrupt, wait_http_200  # noqa: E402
from security import wrk  # noqa: E402

ORIGIN = "https://app.example"
HEADERS = {"Accept-Encoding": "gzip", "Origin": ORIGIN}
PATH = "/big"

ROUTE = """\
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: chain}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /big}}]
      filters:
        - type: CORS
          cors: {allowOrigins: ["https://app.example"], allowMethods: [GET]}
      backendRefs: [{group: meshgate.io, kind: Backend, name: app}]
"""
MESHGATE = {
    "M-shaping": ROUTE + """\
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: shaping}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: chain}]
  compression: [{type: Gzip}]
  rateLimit:
    type: Local
    local:
      rules: [{limit: {requests: 1000000000, unit: Second}}]
""",
    "M-resil": """\
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: chain}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /big}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: app}]
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: resilience}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: chain}]
  retry: {numRetries: 2, retryOn: {triggers: [connect-failure, retriable-status-codes], httpStatusCodes: [503]}}
  circuitBreaker: {maxConnections: 1000, maxPendingRequests: 1000, maxParallelRequests: 1000}
  healthCheck:
    active: {type: HTTP, http: {path: /}, interval: 1s, timeout: 1s, unhealthyThreshold: 3, healthyThreshold: 1}
    passive: {consecutive5XxErrors: 5, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
""",
}
LABELS = {
    "B": "B  plain Envoy (router only)",
    "H-shaping": "H-shaping  hand-written gzip + CORS + local rate limit",
    "M-shaping": "M-shaping  meshgate, same features",
    "H-resil": "H-resil  hand-written retries + breakers + health checks",
    "M-resil": "M-resil  meshgate, same features",
}
PAIRS = [("M-shaping", "H-shaping"), ("M-resil", "H-resil")]


def _any(type_name: str, **fields) -> dict:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def hand_written(kind: str, listen_port: int, upstream_port: int) -> dict:
    """What an Envoy user would write for the chain, starting from the plain config."""
    base = json.loads(json.dumps(__import__("yaml").safe_load(string.Template((BENCH / "static-envoy.yaml").read_text())
                                                               .substitute(LISTEN_PORT=listen_port, UPSTREAM_PORT=upstream_port))))
    config = copy.deepcopy(base)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    cluster = config["static_resources"]["clusters"][0]
    if kind == "H-shaping":
        hcm["http_filters"] = [
            {"name": "envoy.filters.http.compressor", "typed_config": _any(
                "envoy.extensions.filters.http.compressor.v3.Compressor",
                compressor_library={"name": "gzip", "typed_config": _any("envoy.extensions.compression.gzip.compressor.v3.Gzip")})},
            {"name": "envoy.filters.http.cors", "typed_config": _any("envoy.extensions.filters.http.cors.v3.Cors")},
            {"name": "envoy.filters.http.local_ratelimit", "typed_config": _any(
                "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit", stat_prefix="rl",
                token_bucket={"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"},
                filter_enabled={"default_value": {"numerator": 100}}, filter_enforced={"default_value": {"numerator": 100}})},
            *hcm["http_filters"],
        ]
        route["typed_per_filter_config"] = {"envoy.filters.http.cors": _any(
            "envoy.extensions.filters.http.cors.v3.CorsPolicy", allow_origin_string_match=[{"exact": ORIGIN}],
            allow_methods="GET")}
    else:
        route["route"]["retry_policy"] = {"retry_on": "connect-failure,retriable-status-codes", "num_retries": 2,
                                          "retriable_status_codes": [503]}
        cluster["circuit_breakers"] = {"thresholds": [{"max_connections": 1000, "max_pending_requests": 1000,
                                                       "max_requests": 1000}]}
        cluster["health_checks"] = [{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 3, "healthy_threshold": 1,
                                     "no_traffic_interval": "1s", "http_health_check": {"path": "/"}}]
        cluster["outlier_detection"] = {"consecutive_5xx": 5, "interval": "1s", "base_ejection_time": "30s",
                                        "max_ejection_percent": 50}
    return config


def start_hand_written(procs: Processes, tmp: Path, kind: str, upstream_port: int, commands: list[str]) -> dict:
    port = free_port()
    path = tmp / f"envoy-{kind}.json"
    path.write_text(json.dumps(hand_written(kind, port, upstream_port), indent=2))
    cmd = ["taskset", "-c", proxy.ENVOY_CPU, proxy.envoy_binary(), "-c", str(path), "--concurrency", "1",
           "-l", "warning", "--log-path", str(tmp / f"envoy-{kind}.log"), "--use-dynamic-base-id"]
    commands.append(f"{kind}: {fmt_cmd(cmd)}")
    proc = procs.start(f"envoy {kind}", cmd, log=tmp / f"envoy-{kind}.out")
    wait_http_200(f"http://127.0.0.1:{port}{PATH}", 20, proc, f"Envoy ({kind})")
    return {"port": port, "pid": proc.pid}


def start_meshgate(procs: Processes, tmp: Path, kind: str, upstream_port: int, commands: list[str]) -> dict:
    saved = proxy.MESHGATE_CONFIG
    # The bench's Gateway and Backend (proxy.py), with this chain's route and policy instead of its route.
    proxy.MESHGATE_CONFIG = saved.split("---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute")[0] + MESHGATE[kind]
    try:
        run = proxy.start_meshgate(procs, tmp, upstream_port, commands, name=kind, ready_path=PATH,
                                   extra=("--access-log", "off", "--route-stats", "off"))
    finally:
        proxy.MESHGATE_CONFIG = saved
    return {"port": run["port"], "pid": run["envoy_pid"]}


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
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-filters-"))
    procs = Processes()
    commands: list[str] = []
    try:
        upstream_port = free_port()
        nginx = procs.start("nginx", nginx_command(tmp, nginx_config(tmp, upstream_port), proxy.CLIENT_CPU), log=tmp / "nginx.out")
        wait_http_200(f"http://127.0.0.1:{upstream_port}{PATH}", 10, nginx, "nginx")
        port, pid = proxy.start_static_envoy(procs, tmp, "B", upstream_port, None, commands)
        systems = {"B": {"port": port, "pid": pid}}
        for kind in ("H-shaping", "M-shaping", "H-resil", "M-resil"):
            start = start_hand_written if kind.startswith("H") else start_meshgate
            systems[kind] = start(procs, tmp, kind, upstream_port, commands)
        for name, system in systems.items():  # each answers, compressed where it should be
            conn = http.client.HTTPConnection("127.0.0.1", system["port"], timeout=5)
            conn.request("GET", PATH, headers=HEADERS)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            encoding, allow = resp.getheader("content-encoding"), resp.getheader("access-control-allow-origin")
            if resp.status != 200 or (name.endswith("shaping") and (encoding != "gzip" or allow != ORIGIN)):
                raise RuntimeError(f"{name}: {resp.status}, content-encoding {encoding}, allow-origin {allow}")
        results: dict[str, list[dict]] = {name: [] for name in systems}
        for r in range(args.rounds):
            for name, system in systems.items():
                res = wrk(procs, tmp, system["port"], HEADERS, args.duration, args.connections, system["pid"], path=PATH)
                results[name].append(res)
                print(f"round {r + 1}/{args.rounds} {name:<10} {res['rps']:>9,.0f} req/s  p99 {res['p99_ms']:.2f} ms", flush=True)
        s = proxy.summarize(results)
        print()
        print(f"filter chains: {args.rounds} round(s) x {args.duration:g} s, wrk -t1 -c{args.connections}, GET {PATH} "
              f"(1 KiB) with Accept-Encoding: gzip and Origin; Envoy --concurrency 1 on CPU {proxy.ENVOY_CPU}")
        print(f"{'config':<58} {'req/s (median)':>15} {'x plain':>8} {'p99 ms':>7} {'Envoy us/req':>13}")
        for name, v in s.items():
            print(f"{LABELS[name]:<58} {v['rps']:>15,.0f} {v['rps'] / s['B']['rps']:>8.2f} {v['p99']:>7.2f} {v['us_per_req']:>13.1f}")
        print()
        for m, h in PAIRS:
            rps, p99 = s[m]["rps"] / s[h]["rps"], s[m]["p99"] / s[h]["p99"]
            verdict = "PASS" if rps >= 0.97 and p99 <= 1.10 else "MISS"
            print(f"  {m} / {h}: {verdict}  {rps:.2f}x requests/s (>= 0.97), {p99:.2f}x p99 (<= 1.10)")
        print()
        print("commands:")
        for c in commands:
            print(f"  {c}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
