#!/usr/bin/env python3
"""What SecurityPolicy costs per request: meshgate's Envoy with JWT, API keys and JWT + RBAC,
against a hand-written Envoy with the router only (plain Envoy) and meshgate without a policy,
in one run, alternating the configs round by round (as bench/proxy.py does).

Every request carries valid credentials (a token signed RS256 by a key of the inline JWKS, or
an API key), so each is verified and forwarded: the figure is the cost of the check, with
jwt_authn's token cache on (as meshgate configures it). Targets (security issue): JWT >= 0.85x
plain Envoy, API key >= 0.9x, RBAC on claims >= 0.9x.

Usage: .venv/bin/python bench/security.py [--rounds 3] [--duration 10] [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxy  # noqa: E402 - the helpers of bench/proxy.py
from _common import Processes, free_port, need, nginx_command, nginx_config, sigterm_as_interrupt, wait_http_200  # noqa: E402

API_KEY = "bench-key-0123456789abcdef"

# Envoy answers /healthz itself (no policy applies): how the benchmark sees the Envoy is ready.
READY = """\
---
apiVersion: meshgate.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {name: ready}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]
  healthCheck: {path: /healthz}
"""
POLICIES = {
    "M": "",
    "M+jwt": """\
---
apiVersion: meshgate.io/v1alpha1
kind: SecurityPolicy
metadata: {name: jwt}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}]
  jwt:
    providers:
      - {name: bench, issuer: https://bench.test, audiences: [api], localJWKS: {type: Inline, inline: '${BENCH_JWKS}'}}
""",
    "M+apikey": """\
---
apiVersion: v1
kind: Secret
metadata: {name: keys}
type: Opaque
stringData: {bench: "${BENCH_API_KEY}"}
---
apiVersion: meshgate.io/v1alpha1
kind: SecurityPolicy
metadata: {name: keys}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}]
  apiKeyAuth:
    credentialRefs: [{name: keys}]
    extractFrom: [{headers: [x-api-key]}]
""",
    "M+jwt+rbac": """\
---
apiVersion: meshgate.io/v1alpha1
kind: SecurityPolicy
metadata: {name: jwt-rbac}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}]
  jwt:
    providers:
      - {name: bench, issuer: https://bench.test, audiences: [api], localJWKS: {type: Inline, inline: '${BENCH_JWKS}'}}
  authorization:
    defaultAction: Deny
    rules:
      - action: Allow
        principal:
          jwt: {provider: bench, claims: [{name: roles, valueType: StringArray, values: [admin]}], scopes: [write]}
""",
}
LABELS = {
    "B": "B  hand-written Envoy (router only)",
    "M": "M  meshgate, no policy",
    "M+jwt": "M+jwt  JWT RS256, inline JWKS",
    "M+apikey": "M+apikey  API key header",
    "M+jwt+rbac": "M+jwt+rbac  JWT + a claim and a scope rule",
}
TARGETS = {"M+jwt": 0.85, "M+apikey": 0.9, "M+jwt+rbac": 0.9}


def keys() -> tuple[str, str]:
    """(JWKS, a token valid for an hour) for a fresh RSA key."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="bench", alg="RS256")
    now = int(time.time())
    token = jwt.encode({"iss": "https://bench.test", "aud": "api", "sub": "bench", "roles": ["admin"],
                        "scope": "read write", "iat": now, "exp": now + 3600}, key, algorithm="RS256",
                       headers={"kid": "bench"})
    return json.dumps({"keys": [jwk]}), token


def start_variant(procs: Processes, tmp: Path, name: str, upstream_port: int, jwks: str, commands: list[str]) -> dict:
    """`meshgate run` with the bench route and this variant's policy (access log off: only the
    filters differ from M)."""
    saved = proxy.MESHGATE_CONFIG
    proxy.MESHGATE_CONFIG = saved + READY + POLICIES[name]
    os.environ["BENCH_JWKS"], os.environ["BENCH_API_KEY"] = jwks, API_KEY
    try:
        return proxy.start_meshgate(procs, tmp, upstream_port, commands, name=name.replace("+", "-"),
                                    extra=("--access-log", "off"), ready_path="/healthz")
    finally:
        proxy.MESHGATE_CONFIG = saved


def wrk(procs: Processes, tmp: Path, port: int, headers: dict[str, str], duration: float, connections: int,
        pid: int, path: str = "/") -> dict:
    cmd = ["taskset", "-c", proxy.CLIENT_CPU, need("wrk", "wrk"), "-t1", f"-c{connections}", f"-d{duration:g}s",
           "--latency", *[a for k, v in headers.items() for a in ("-H", f"{k}: {v}")], f"http://127.0.0.1:{port}{path}"]
    out = tmp / "wrk.out"
    out.unlink(missing_ok=True)  # the log is appended to: parse this run's output only
    cpu0, t0 = proxy.cpu_seconds(pid), time.monotonic()
    proc = procs.start("wrk", cmd, log=out)
    try:
        proc.wait(duration + 30)
    finally:
        procs.stop(proc)
        procs.procs.remove(("wrk", proc))
    text = out.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text}")
    result = proxy.parse_wrk(text)
    result["proxy_cpu_pct"] = 100 * (proxy.cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    return result


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
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-security-"))
    procs = Processes()
    commands: list[str] = []
    try:
        upstream_port = free_port()
        nginx = procs.start("nginx", nginx_command(tmp, nginx_config(tmp, upstream_port), proxy.CLIENT_CPU),
                            log=tmp / "nginx.out")
        wait_http_200(f"http://127.0.0.1:{upstream_port}/", 10, nginx, "nginx")
        jwks, token = keys()
        systems = {"B": dict(zip(("port", "pid"), proxy.start_static_envoy(procs, tmp, "B", upstream_port, None, commands)))}
        for name in POLICIES:
            run = start_variant(procs, tmp, name, upstream_port, jwks, commands)
            systems[name] = {"port": run["port"], "pid": run["envoy_pid"]}
        headers = {"B": {}, "M": {}, "M+jwt": {"Authorization": f"Bearer {token}"},
                   "M+apikey": {"x-api-key": API_KEY}, "M+jwt+rbac": {"Authorization": f"Bearer {token}"}}
        for name, system in systems.items():  # every variant must answer 200 before it is measured
            conn = http.client.HTTPConnection("127.0.0.1", system["port"], timeout=5)
            conn.request("GET", "/", headers=headers[name])
            status = conn.getresponse().status
            conn.close()
            if status != 200:
                raise RuntimeError(f"{name} answered {status} to a request with valid credentials")
        results: dict[str, list[dict]] = {name: [] for name in systems}
        for r in range(args.rounds):
            for name, system in systems.items():
                res = wrk(procs, tmp, system["port"], headers[name], args.duration, args.connections, system["pid"])
                results[name].append(res)
                print(f"round {r + 1}/{args.rounds} {name:<11} {res['rps']:>9,.0f} req/s  p99 {res['p99_ms']:.2f} ms  "
                      f"non-2xx {res['non2xx']}", flush=True)
        summary = proxy.summarize(results)
        base = summary["B"]["rps"]
        print()
        print(f"SecurityPolicy per-request cost: {args.rounds} round(s) x {args.duration:g} s, wrk -t1 -c{args.connections}; "
              f"Envoy --concurrency 1 on CPU {proxy.ENVOY_CPU}")
        print(f"{'config':<46} {'req/s (median)':>15} {'x plain':>8} {'p99 ms':>7} {'Envoy us/req':>13} {'errors':>7}")
        for name, s in summary.items():
            print(f"{LABELS[name]:<46} {s['rps']:>15,.0f} {s['rps'] / base:>8.2f} {s['p99']:>7.2f} "
                  f"{s['us_per_req']:>13.1f} {s['errors']:>7}")
        print()
        for name, target in TARGETS.items():
            ratio = summary[name]["rps"] / base
            print(f"  {name:<11} >= {target:.2f}x plain Envoy: {'PASS' if ratio >= target else 'MISS'} ({ratio:.2f}x; "
                  f"vs meshgate without a policy {summary[name]['rps'] / summary['M']['rps']:.2f}x)")
        print()
        print("commands:")
        for c in commands:
            print(f"  {c}")
        spread = {n: (min(r['rps'] for r in rs), max(r['rps'] for r in rs)) for n, rs in results.items()}
        print("min-max req/s: " + "; ".join(f"{n} {a:,.0f}-{b:,.0f}" for n, (a, b) in spread.items()))
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
