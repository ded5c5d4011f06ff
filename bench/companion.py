#!/usr/bin/env python3
"""What request signing (SecurityPolicy requestSignature, per-request Python) costs, through one
`meshgate run` (Envoy on CPU 0, one worker):

- **plain**   a route without a policy: Envoy alone;
- **edge**    the signed route, checked by `meshgate edge` (the real companion);
- **naive**   the same route and the same check, by a straightforward grpc.aio servicer (the
              generated `AuthorizationServicer`, a CheckResponse built per call), in place of
              the companion at the same address.

Both servicers run on CPU 1 (with wrk and nginx), one at a time, so they get the same core.
Every request is signed (a unique nonce each: wrk cycles through pre-signed requests, see
`_lua`); the figures are requests/s, p99, non-2xx answers, and the servicer's CPU µs per check
(utime+stime of its process over the run / checks answered). Target (security issue): edge >=
2x the naive servicer's requests/s.

Usage: .venv/bin/python bench/companion.py [--rounds 3] [--duration 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxy  # noqa: E402 - the helpers of bench/proxy.py
from _common import (  # noqa: E402
    Processes, free_port, get_status, meshgate_cli, need, nginx_command, nginx_config, sigterm_as_interrupt, wait_http_200)

KEY_ID, KEY = "bench", "bench-signing-key-0123456789abcdef"
CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, protocol: HTTP, port: "${BENCH_LISTEN_PORT}"}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: nginx}
spec:
  endpoints: [{address: 127.0.0.1, port: "${BENCH_UPSTREAM_PORT}"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app}
spec:
  parentRefs: [{name: edge}]
  rules:
    - name: signed
      matches: [{path: {type: PathPrefix, value: /signed}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: nginx}]
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: nginx}]
---
apiVersion: v1
kind: Secret
metadata: {name: keys}
type: Opaque
stringData: {bench: bench-signing-key-0123456789abcdef}
---
apiVersion: meshgate.io/v1alpha1
kind: SecurityPolicy
metadata: {name: signed}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: signed}]
  requestSignature:
    keyRefs: [{name: keys}]
    headers: [host]
    maxClockSkew: 1h
"""


def _lua(path: Path, host: str, count: int) -> None:
    """A wrk script that sends `count` distinct signed GETs in turn (nonces never repeat unless the
    run outlasts them; then the companion answers 401 `replayed`, counted as non-2xx).

    The signed requests go in a data file the script reads when wrk starts: as literals in the
    script, tens of thousands of them exceed Lua's constants per chunk, and wrk then silently
    falls back to plain GETs of `/` (which measured the unsigned route, not the companion)."""
    from meshgate.edge.signing import sign_request

    data = path.with_suffix(".requests")
    now = int(time.time())
    with data.open("w") as out:
        for i in range(count):
            target = f"/signed/item/{i}"
            h = sign_request(KEY_ID, KEY.encode(), method="GET", path_and_query=target, headers={"host": host},
                             signed_headers=("host",), timestamp=now, nonce=f"bench-nonce-{i:012d}")
            out.write("\t".join([target, *(f"{k}: {v}" for k, v in {"Host": host, **h}.items())]) + "\n")
    path.write_text(f"""\
local reqs = {{}}
for line in io.lines("{data}") do
  local fields = {{}}
  for field in string.gmatch(line, "[^\\t]+") do fields[#fields + 1] = field end
  local headers = {{}}
  for i = 2, #fields do
    local name, value = string.match(fields[i], "^([^:]+): (.*)$")
    headers[name] = value
  end
  -- wrk.format with a header table sends only those headers: Host too.
  reqs[#reqs + 1] = wrk.format("GET", fields[1], headers)
end
local n = 0
request = function()
  n = n % #reqs + 1
  return reqs[n]
end
""")


NAIVE = r'''
import asyncio, hashlib, hmac, sys, time
import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

KEYS = {"bench": b"bench-signing-key-0123456789abcdef"}
SEEN = {}

class Naive(external_auth_pb2_grpc.AuthorizationServicer):
    async def Check(self, request, context):
        http = request.attributes.request.http
        headers = dict(http.headers)
        try:
            key = KEYS[headers["x-meshgate-key-id"]]
            ts, nonce = headers["x-meshgate-timestamp"], headers["x-meshgate-nonce"]
            path, _, query = http.path.partition("?")
            text = "\n".join(["MESHGATE-HMAC-SHA256", ts, nonce, headers["x-meshgate-key-id"], http.method, path,
                              query, "host", "host:" + http.host.strip(), hashlib.sha256(http.raw_body).hexdigest()])
            ok = hmac.compare_digest("v1=" + hmac.new(key, text.encode(), hashlib.sha256).hexdigest(),
                                     headers["x-meshgate-signature"])
            ok = ok and abs(time.time() - int(ts)) <= 3600 and nonce not in SEEN
            if ok:
                SEEN[nonce] = int(ts) + 3600
        except KeyError:
            ok = False
        if ok:
            return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK),
                                                   ok_response=external_auth_pb2.OkHttpResponse())
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.UNAUTHENTICATED),
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized)))

async def main():
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Naive(), server)
    server.add_insecure_port(sys.argv[1])
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
'''


def _wait_grpc(address: str, timeout: float = 20.0) -> None:
    import grpc

    async def probe() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout)

    asyncio.run(probe())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    need("wrk", "wrk")
    need("taskset", "util-linux")
    sigterm_as_interrupt()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-companion-"))
    procs = Processes()
    results: dict[str, list[dict]] = {"plain": [], "edge": [], "naive": []}
    try:
        upstream_port = free_port()
        conf = nginx_config(tmp, upstream_port)
        procs.start("nginx", nginx_command(tmp, conf, proxy.CLIENT_CPU), log=tmp / "nginx.out")
        edge_address = f"127.0.0.1:{free_port()}"
        (tmp / "config").mkdir()
        (tmp / "config" / "bench.yaml").write_text(CONFIG)
        port, xds_port, status_port = free_port(), free_port(), free_port()
        env = dict(os.environ, BENCH_LISTEN_PORT=str(port), BENCH_UPSTREAM_PORT=str(upstream_port))
        cmd = ["taskset", "-c", proxy.CLIENT_CPU, meshgate_cli(), "run", str(tmp / "config"),
               "--xds-address", f"127.0.0.1:{xds_port}", "--status-address", f"127.0.0.1:{status_port}",
               "--admin-port", "0", "--stats-address", "off", "--state-dir", str(tmp / "state"), "--concurrency", "1",
               "--no-sample-upstreams", "--access-log", "off", "--edge-address", edge_address, "--no-edge"]
        mg = procs.start("meshgate run", cmd, log=tmp / "meshgate.out", env=env)
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and not (status and status.get("envoy", {}).get("pid")):
            if mg.poll() is not None:
                raise RuntimeError((tmp / "meshgate.out").read_text()[-3000:])
            status = get_status(f"http://127.0.0.1:{status_port}")
            time.sleep(0.1)
        envoy_pid = status["envoy"]["pid"]
        procs.adopt("meshgate's Envoy", envoy_pid)
        import subprocess

        subprocess.run(["taskset", "-apc", proxy.ENVOY_CPU, str(envoy_pid)], check=True, stdout=subprocess.DEVNULL)
        wait_http_200(f"http://127.0.0.1:{port}/", 20, mg, "meshgate's Envoy")
        host = f"127.0.0.1:{port}"
        expected = int(args.duration * 6000) + 1000  # more distinct requests than a run sends
        (tmp / "naive.py").write_text(NAIVE)
        servicers = {
            "edge": ["taskset", "-c", proxy.CLIENT_CPU, meshgate_cli(), "edge", "--xds-address", f"127.0.0.1:{xds_port}",
                     "--address", edge_address, "--metrics-address", "off", "--log-level", "warning"],
            "naive": ["taskset", "-c", proxy.CLIENT_CPU, sys.executable, str(tmp / "naive.py"), edge_address],
        }
        for rnd in range(args.rounds):
            r = proxy.run_wrk(procs, tmp, f"http://{host}/plain", args.duration, args.connections, envoy_pid)
            results["plain"].append(r)
            for name, scmd in servicers.items():
                lua = tmp / f"signed-{name}-{rnd}.lua"
                _lua(lua, host, expected)  # fresh nonces for every run
                servicer = procs.start(name, scmd, log=tmp / f"{name}.out")
                _wait_grpc(edge_address)
                time.sleep(1.0)  # the companion's config over ADS
                cpu0 = proxy.cpu_seconds(servicer.pid)
                out = tmp / "wrk.out"
                out.unlink(missing_ok=True)
                w = procs.start("wrk", ["taskset", "-c", proxy.CLIENT_CPU, need("wrk", "wrk"), "-t1",
                                        f"-c{args.connections}", f"-d{args.duration:g}s", "--latency", "-s", str(lua),
                                        f"http://{host}/"], log=out)
                w.wait(args.duration + 30)
                procs.procs.remove(("wrk", w))
                cpu = proxy.cpu_seconds(servicer.pid) - cpu0
                text = out.read_text()
                r = proxy.parse_wrk(text)
                total = int(next(line.split()[0] for line in text.splitlines() if "requests in" in line))
                r.update(requests=total, servicer_cpu_us_per_check=1e6 * cpu / max(total, 1))
                results[name].append(r)
                procs.stop(servicer)
                procs.procs.remove((name, servicer))
            print(f"round {rnd + 1}/{args.rounds}: " + ", ".join(
                f"{k} {v[-1].get('rps', 0):,.0f} rps" for k, v in results.items()), flush=True)
    finally:
        procs.stop_all()
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for name, runs in results.items():
        if not runs:
            continue
        rps = sorted(r["rps"] for r in runs)
        summary[name] = {"rps_median": rps[len(rps) // 2],
                         "p99_ms_median": sorted(r.get("p99_ms", 0) for r in runs)[len(runs) // 2],
                         "non2xx": sum(r.get("non2xx", 0) for r in runs),
                         "cpu_us_per_check": (sorted(r["servicer_cpu_us_per_check"] for r in runs)[len(runs) // 2]
                                              if "servicer_cpu_us_per_check" in runs[0] else None)}
    print(f"\n{args.rounds} rounds x {args.duration:g} s, wrk -t1 -c{args.connections}; Envoy on CPU "
          f"{proxy.ENVOY_CPU}; servicer, nginx, wrk on CPU {proxy.CLIENT_CPU}")
    print(f"{'config':8} {'req/s':>10} {'p99 ms':>8} {'non-2xx':>8} {'CPU µs/check':>13}")
    for name, s in summary.items():
        cpu = f"{s['cpu_us_per_check']:.0f}" if s["cpu_us_per_check"] is not None else "-"
        print(f"{name:8} {s['rps_median']:>10,.0f} {s['p99_ms_median']:>8.2f} {s['non2xx']:>8} {cpu:>13}")
    if "edge" in summary and "naive" in summary and summary["naive"]["rps_median"]:
        ratio = summary["edge"]["rps_median"] / summary["naive"]["rps_median"]
        print(f"edge / naive: {ratio:.2f}x (target >= 2x); edge / plain: "
              f"{summary['edge']['rps_median'] / summary['plain']['rps_median']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    return 0


_ = hashlib, hmac
if __name__ == "__main__":
    sys.exit(main())
