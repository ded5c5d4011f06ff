#!/usr/bin/env python3
"""gRPC (unary, bidirectional streaming) and WebSocket through meshgate, against direct and a
hand-written Envoy config, in one run, alternating round by round (bench/proxy.py's method:
Envoy --concurrency 1 pinned to CPU 0; the upstreams, the load clients and meshgate's Python on
CPU 1).

  A  direct: client -> upstream
  B  plain Envoy: a static config (bench/static-envoy.yaml's listener and router, plus an
     HTTP/2 cluster for gRPC and `upgrade_configs: websocket` for the WebSocket route)
  M  `meshgate run --access-log off --route-stats off` (like for like with B): a GRPCRoute to a
     `protocol: GRPC` Backend, an HTTPRoute /ws to an HTTP/1 Backend; config over ADS

Tests, each on A, B and M every round:
  unary   gRPC unary calls/s and latency p50/p99: h2load (nghttp2-client), POSTs of a
          length-prefixed 64-byte message with `content-type: application/grpc`, `te: trailers`
          to Echo/Unary of meshgate/devtools/grpc_echo.py (grpc.aio)
  bidi    gRPC messages/s on several concurrent Echo/BidiStream streams (a grpc.aio client in its
          own process; each stream keeps a window of messages in flight)
  ws      WebSocket echo messages/s over N concurrent connections: a `websockets` client in its
          own process, tests/ws_upstream.py (aiohttp) as the upstream, a window in flight each

Every figure is the median over rounds; ratios are to A (direct) and to B (plain Envoy). Envoy's
CPU per call/message is the steadiest figure when the Python upstream, not Envoy, is the limit
(the report prints each side's CPU so you can see which one saturated).

Usage: .venv/bin/python bench/protocols.py [--rounds 3] [--duration 5] [--quick] [--only unary,bidi,ws]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BENCH,
    ROOT,
    Processes,
    fmt_cmd,
    free_port,
    get_status,
    in_sync,
    meshgate_cli,
    sigterm_as_interrupt,
)
from proxy import cpu_seconds, cpu_steal_snapshot, envoy_binary, thread_cpus  # noqa: E402

ENVOY_CPU = "0"
CLIENT_CPU = "1"  # upstreams, load clients, meshgate's Python process
SERVICE = "meshgate.devtools.Echo"
PAYLOAD = b"m" * 64
SYSTEMS = ("A", "B", "M")
LABELS = {"A": "A direct", "B": "B plain Envoy", "M": "M meshgate"}
TESTS = ("unary", "bidi", "ws")
TEST_LABELS = {"unary": "gRPC unary", "bidi": "gRPC bidi stream", "ws": "WebSocket echo"}

MESHGATE_CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, protocol: HTTP, port: ${LISTEN_PORT}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: echo-grpc}
spec:
  protocol: GRPC
  endpoints: [{address: 127.0.0.1, port: ${GRPC_PORT}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{method: {service: meshgate.devtools.Echo}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: echo-grpc}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: echo-ws}
spec:
  endpoints: [{address: 127.0.0.1, port: ${WS_PORT}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ws}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /ws}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: echo-ws}]
"""


# --- the clients and the gRPC upstream, each run as `protocols.py --role ...` in its own process ---


def serve_grpc(port: int) -> None:
    from meshgate.devtools._serve import serve
    from meshgate.devtools.grpc_echo import GrpcEchoServer

    asyncio.run(serve([GrpcEchoServer("up", "127.0.0.1", port)], "gRPC echo"))


async def _timed(duration: float, workers) -> dict:
    """Run the worker coroutines (each counting into a shared list) for `duration` seconds."""
    counts = [0] * len(workers)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w(i, counts, stop)) for i, w in enumerate(workers)]
    await asyncio.sleep(0.3)  # connections open, streams started: not counted
    start_counts, t0 = sum(counts), time.monotonic()
    await asyncio.sleep(duration)
    done, elapsed = sum(counts) - start_counts, time.monotonic() - t0
    stop.set()
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
    return {"messages": done, "seconds": elapsed, "rate": done / elapsed, "errors": errors[:3]}


def client_bidi(target: str, streams: int, duration: float, window: int) -> dict:
    import grpc

    async def run() -> dict:
        async with grpc.aio.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
            method = channel.stream_stream(f"/{SERVICE}/BidiStream")

            def worker():
                async def go(i, counts, stop):
                    credit = asyncio.Semaphore(window)

                    async def requests():
                        while not stop.is_set():
                            await credit.acquire()
                            yield PAYLOAD

                    async for _ in method(requests()):
                        counts[i] += 1
                        credit.release()

                return go

            return await _timed(duration, [worker() for _ in range(streams)])

    return asyncio.run(run())


def client_ws(url: str, connections: int, duration: float, window: int) -> dict:
    import websockets

    async def run() -> dict:
        def worker():
            async def go(i, counts, stop):
                async with websockets.connect(url, compression=None, max_size=None) as ws:
                    for _ in range(window):
                        await ws.send(PAYLOAD)
                    while not stop.is_set():
                        await ws.recv()
                        counts[i] += 1
                        await ws.send(PAYLOAD)

            return go

        return await _timed(duration, [worker() for _ in range(connections)])

    return asyncio.run(run())


def check_grpc(target: str) -> None:
    """One unary and one bidi call answered correctly (a broken route must not be measured)."""
    from meshgate.devtools.grpc_echo import call_bidi, call_unary

    async def run():
        reply = await call_unary(target, PAYLOAD)
        assert reply == b"up:" + PAYLOAD, reply
        replies = await call_bidi(target, [b"a", b"b"])
        assert replies == [b"up:a", b"up:b"], replies

    asyncio.run(run())


def check_ws(url: str) -> None:
    import websockets

    async def run():
        async with websockets.connect(url) as ws:
            await ws.send(PAYLOAD)
            assert await ws.recv() == PAYLOAD

    asyncio.run(run())


# --- the systems under test -----------------------------------------------------------------


def plain_envoy_config(tmp: Path, listen_port: int, grpc_port: int, ws_port: int) -> Path:
    """bench/static-envoy.yaml with two routes: gRPC to an HTTP/2 cluster, /ws (upgrades on)."""
    import yaml

    config = yaml.safe_load(string.Template((BENCH / "static-envoy.yaml").read_text()).substitute(
        LISTEN_PORT=listen_port, UPSTREAM_PORT=ws_port))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    # Without it Envoy answers an HTTP/1.1 `Upgrade: websocket` as a plain request.
    hcm["upgrade_configs"] = [{"upgrade_type": "websocket"}]
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [
        {"match": {"prefix": f"/{SERVICE}/"}, "route": {"cluster": "grpc"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}},
    ]
    grpc_cluster = json.loads(json.dumps(config["static_resources"]["clusters"][0]).replace(str(ws_port), str(grpc_port)))
    grpc_cluster["name"] = grpc_cluster["load_assignment"]["cluster_name"] = "grpc"
    # gRPC needs HTTP/2 to the upstream (prior knowledge, h2c).
    grpc_cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    config["static_resources"]["clusters"].append(grpc_cluster)
    path = tmp / "envoy-B.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            check()
            return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready in {timeout:g} s: {last!r}")


def start_meshgate(procs: Processes, tmp: Path, grpc_port: int, ws_port: int, commands: list[str]) -> dict:
    port, xds_port, status_port = free_port(), free_port(), free_port()
    config_dir = tmp / "meshgate-config"
    config_dir.mkdir()
    (config_dir / "bench.yaml").write_text(string.Template(MESHGATE_CONFIG).substitute(
        LISTEN_PORT=port, GRPC_PORT=grpc_port, WS_PORT=ws_port))
    cmd = ["taskset", "-c", CLIENT_CPU, meshgate_cli(), "run", str(config_dir),
           "--xds-address", f"127.0.0.1:{xds_port}", "--status-address", f"127.0.0.1:{status_port}",
           "--admin-port", "0", "--state-dir", str(tmp / "meshgate-state"), "--concurrency", "1",
           "--no-sample-upstreams", "--envoy-log-level", "warning", "--access-log", "off", "--route-stats", "off"]
    commands.append(f"M: {fmt_cmd(cmd)}   (config: {config_dir.name}/bench.yaml, printed with --keep)")
    proc = procs.start("meshgate run", cmd, log=tmp / "meshgate.out")
    status_url = f"http://127.0.0.1:{status_port}"
    status: dict | None = None

    def ready():
        nonlocal status
        status = get_status(status_url)
        assert status and status.get("envoy", {}).get("pid") and in_sync(status), status

    try:
        wait_until(ready, 60, "meshgate run", proc)
    except RuntimeError:
        print((tmp / "meshgate.out").read_text()[-3000:], file=sys.stderr)
        raise
    envoy_pid = status["envoy"]["pid"]
    procs.adopt("meshgate's Envoy", envoy_pid)
    # Envoy inherited CPU 1 from the meshgate process; move it and all its threads to CPU 0.
    subprocess.run(["taskset", "-apc", ENVOY_CPU, str(envoy_pid)], check=True, stdout=subprocess.DEVNULL)
    commands.append(f"M: taskset -apc {ENVOY_CPU} <envoy pid from /status>   (all threads)")
    return {"port": port, "proc": proc, "envoy_pid": envoy_pid, "status_url": status_url}


# --- load -----------------------------------------------------------------------------------


def h2load_command(h2load: str, target: str, body: Path, duration: float, log: Path | None,
                   clients: int, streams: int) -> list[str]:
    cmd = ["taskset", "-c", CLIENT_CPU, h2load, "-t1", f"-c{clients}", f"-m{streams}", f"-D{duration:g}",
           "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    if log is not None:
        cmd += [f"--log-file={log}"]
    return cmd + [f"http://{target}/{SERVICE}/Unary"]


def parse_h2load(text: str, log: Path) -> dict:
    import re

    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not m or not status:
        raise RuntimeError(f"could not parse h2load output:\n{text}")
    lat = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2)
    succeeded = int(m.group(4))
    seconds = float(re.search(r"finished in ([\d.]+)(m?s)", text).group(1))
    if re.search(r"finished in [\d.]+ms", text):
        seconds /= 1000
    return {
        "rate": succeeded / seconds, "messages": succeeded,
        "p50_ms": lat[len(lat) // 2] / 1000 if lat else float("nan"),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000 if lat else float("nan"),
        "errors": int(m.group(5)) + int(m.group(6)) + int(status.group(3)) + int(status.group(4)),
    }


def run_load(procs: Processes, tmp: Path, name: str, cmd: list[str], timeout: float,
             envoy_pid: int | None, cpu1_pids: list[int]) -> tuple[str, dict]:
    out = tmp / f"{name}.out"
    out.unlink(missing_ok=True)
    watched = {"envoy": envoy_pid, **{f"cpu1:{p}": p for p in cpu1_pids}}
    before, t0 = {k: cpu_seconds(p) for k, p in watched.items()}, time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the client's CPU, once it is reaped
    proc = procs.start(name, cmd, log=out)
    try:
        proc.wait(timeout)
    finally:
        procs.stop(proc)
        procs.procs.remove((name, proc))
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    usage = {k: (cpu_seconds(p) - before[k]) / wall for k, p in watched.items() if p}
    text = out.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited with {proc.returncode}:\n{text[-3000:]}")
    client = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall
    cpu = {"envoy_pct": 100 * usage["envoy"] if "envoy" in usage else None,
           "upstream_pct": 100 * sum(v for k, v in usage.items() if k.startswith("cpu1:")),
           "client_pct": 100 * client, "wall": wall}
    return text, cpu


# --- report ---------------------------------------------------------------------------------


def summarize(runs: list[dict]) -> dict:
    med = statistics.median
    out = {"rate": med(r["rate"] for r in runs), "rate_min": min(r["rate"] for r in runs),
           "rate_max": max(r["rate"] for r in runs), "errors": sum(r["errors"] for r in runs),
           "upstream_pct": med(r["upstream_pct"] for r in runs),
           "cpu1_pct": med(r["upstream_pct"] + r["client_pct"] for r in runs),
           "up_us_per_msg": med(r["upstream_pct"] / 100 / r["rate"] * 1e6 for r in runs)}
    if "p50_ms" in runs[0]:
        out["p50"] = med(r["p50_ms"] for r in runs)
        out["p99"] = med(r["p99_ms"] for r in runs)
    if runs[0]["envoy_pct"] is not None:
        out["envoy_pct"] = med(r["envoy_pct"] for r in runs)
        out["us_per_msg"] = med(r["envoy_pct"] / 100 / r["rate"] * 1e6 for r in runs)
    return out


def print_report(results: dict, args, commands: list[str], noise: dict, skipped: dict[str, str]) -> None:
    rounds = args.rounds
    print()
    print(f"meshgate protocols: {rounds} round(s) x {args.duration:g} s per test and system, order "
          f"{' '.join(SYSTEMS)} per test per round")
    print(f"Envoy --concurrency 1 on CPU {ENVOY_CPU}; upstreams, clients, meshgate (Python) on CPU {CLIENT_CPU}; "
          f"{os.cpu_count()} CPUs")
    print(f"noise: load average {noise['load']} before the run, {noise['load_after']} after; CPU steal during it "
          f"{noise['steal_pct']:.1f}% (a wide min-max means other work shared the machine)")
    print(f"unary: h2load -c{args.h2_clients} -m{args.h2_streams} ({args.h2_clients * args.h2_streams} calls in flight), "
          f"{len(PAYLOAD)}-byte messages; bidi: {args.streams} streams x window {args.window}; "
          f"ws: {args.connections} connections x window {args.window}")
    print()
    header = (f"{'test':<17} {'system':<14} {'per s median (min-max)':>26} {'x A':>6} {'x B':>6} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'errors':>6} {'Envoy CPU':>9} {'Envoy us/msg':>12} {'up us/msg':>9} {'CPU1':>5}")
    print(header)
    print("-" * len(header))
    for test in TESTS:
        if test not in results:
            continue
        s = {n: summarize(results[test][n]) for n in SYSTEMS}
        for n in SYSTEMS:
            r = s[n]
            span = f"{r['rate']:,.0f} ({r['rate_min']:,.0f}-{r['rate_max']:,.0f})"
            xa = r["rate"] / s["A"]["rate"]
            xb = f"{r['rate'] / s['B']['rate']:.3f}" if n != "A" else ""
            p50 = f"{r['p50']:.2f}" if "p50" in r else "-"
            p99 = f"{r['p99']:.2f}" if "p99" in r else "-"
            cpu = f"{r['envoy_pct']:.0f}%" if "envoy_pct" in r else "-"
            us = f"{r['us_per_msg']:.1f}" if "us_per_msg" in r else "-"
            print(f"{TEST_LABELS[test] if n == 'A' else '':<17} {LABELS[n]:<14} {span:>26} {xa:>6.3f} {xb:>6} "
                  f"{p50:>7} {p99:>7} {r['errors']:>6} {cpu:>9} {us:>12} {r['up_us_per_msg']:>9.1f} {r['cpu1_pct']:>4.0f}%")
        if "p99" in s["A"]:
            print(f"{'':<17} p99 x A: B {s['B']['p99'] / s['A']['p99']:.2f}, M {s['M']['p99'] / s['A']['p99']:.2f}; "
                  f"p99 M / B {s['M']['p99'] / s['B']['p99']:.2f}; Envoy us/msg M / B "
                  f"{s['M']['us_per_msg'] / s['B']['us_per_msg']:.2f}")
        else:
            print(f"{'':<17} Envoy us/msg M / B {s['M']['us_per_msg'] / s['B']['us_per_msg']:.2f}")
    print()
    print("per round (per s):")
    for test in results:
        for n in SYSTEMS:
            print(f"  {test:<6} {n}  " + "  ".join(f"{r['rate']:>9,.0f}" for r in results[test][n]))
    for test, why in skipped.items():
        print(f"SKIPPED {TEST_LABELS[test]}: {why}")
    print()
    print("up us/msg: the upstream's CPU time per call or message (for M including meshgate's idle Python process);")
    print("CPU1: all of CPU 1 used during the load (upstream + load client [+ meshgate]): near 100% means the")
    print("Python side on CPU 1, not Envoy on CPU 0, set the pace.")
    print()
    print("commands:")
    for c in commands:
        print(f"  {c}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per test and system")
    ap.add_argument("--only", default=",".join(TESTS), help="comma-separated subset of: unary,bidi,ws")
    ap.add_argument("--h2-clients", type=int, default=4, help="h2load connections (unary)")
    ap.add_argument("--h2-streams", type=int, default=8, help="h2load concurrent calls per connection")
    ap.add_argument("--streams", type=int, default=8, help="concurrent bidi streams")
    ap.add_argument("--connections", type=int, default=8, help="concurrent WebSocket connections")
    ap.add_argument("--window", type=int, default=8, help="messages in flight per stream / connection")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round of 1 s")
    ap.add_argument("--json", metavar="FILE", help="also write raw results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)  # internal: upstream / client processes
    args = ap.parse_args()
    if args.role:
        return run_role(args.role)
    if args.quick:
        args.rounds, args.duration = 1, 1.0
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs (Envoy on CPU 0, the rest on CPU 1)")
    if not shutil.which("taskset"):
        sys.exit("taskset not found: apt-get install -y util-linux")
    tests = [t for t in args.only.split(",") if t]
    unknown = set(tests) - set(TESTS)
    if unknown:
        sys.exit(f"unknown test(s) {sorted(unknown)}: choose from {','.join(TESTS)}")
    skipped: dict[str, str] = {}
    h2load = shutil.which("h2load")
    if "unary" in tests and not h2load:
        skipped["unary"] = "h2load not found (apt-get install -y nghttp2-client, see bench/requirements-debian.txt)"
        tests.remove("unary")
    sigterm_as_interrupt()

    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-protocols-"))
    procs = Processes()
    commands: list[str] = []
    py = sys.executable
    me = str(Path(__file__).resolve())
    try:
        grpc_port, ws_port = free_port(), free_port()
        cmd = ["taskset", "-c", CLIENT_CPU, py, me, "--role", "serve-grpc", str(grpc_port)]
        commands.append(f"gRPC upstream: {fmt_cmd(cmd)}   (meshgate/devtools/grpc_echo.py GrpcEchoServer, grpc.aio)")
        grpc_up = procs.start("grpc upstream", cmd, log=tmp / "grpc-upstream.out")
        cmd = ["taskset", "-c", CLIENT_CPU, py, str(ROOT / "tests" / "ws_upstream.py"), str(ws_port)]
        commands.append(f"WebSocket upstream: {fmt_cmd(cmd)}   (aiohttp, /ws/echo)")
        ws_up = procs.start("ws upstream", cmd, log=tmp / "ws-upstream.out")

        b_port = free_port()
        config = plain_envoy_config(tmp, b_port, grpc_port, ws_port)
        cmd = ["taskset", "-c", ENVOY_CPU, envoy_binary(), "-c", str(config), "--concurrency", "1",
               "-l", "warning", "--log-path", str(tmp / "envoy-B.log"), "--use-dynamic-base-id"]
        commands.append(f"B: {fmt_cmd(cmd)}   (static-envoy.yaml + HTTP/2 cluster for gRPC + upgrade_configs websocket)")
        envoy_b = procs.start("envoy B", cmd, log=tmp / "envoy-B.out")
        mg = start_meshgate(procs, tmp, grpc_port, ws_port, commands)

        grpc_targets = {"TARGET": "TARGET", "A": f"127.0.0.1:{grpc_port}", "B": f"127.0.0.1:{b_port}", "M": f"127.0.0.1:{mg['port']}"}
        ws_urls = {"TARGET": "ws://TARGET/ws/echo", "A": f"ws://127.0.0.1:{ws_port}/ws/echo",
                   "B": f"ws://127.0.0.1:{b_port}/ws/echo", "M": f"ws://127.0.0.1:{mg['port']}/ws/echo"}
        envoy_pids = {"A": None, "B": envoy_b.pid, "M": mg["envoy_pid"]}  # taskset execs Envoy: same PID
        cpu1 = {"A": [grpc_up.pid, ws_up.pid], "B": [grpc_up.pid, ws_up.pid],
                "M": [grpc_up.pid, ws_up.pid, mg["proc"].pid]}
        for n in SYSTEMS:
            wait_until(lambda n=n: check_grpc(grpc_targets[n]), 20, f"gRPC echo via {n}")
            wait_until(lambda n=n: check_ws(ws_urls[n]), 20, f"WebSocket echo via {n}")
        cpus = thread_cpus(mg["envoy_pid"])
        if cpus != {ENVOY_CPU}:
            raise RuntimeError(f"meshgate's Envoy threads are not all on CPU {ENVOY_CPU}: {cpus}")

        body = tmp / "unary.bin"
        body.write_bytes(b"\x00" + len(PAYLOAD).to_bytes(4, "big") + PAYLOAD)  # gRPC length-prefixed message
        h2log = tmp / "h2load.log"

        def command(test: str, n: str, duration: float) -> list[str]:
            if test == "unary":
                return h2load_command(h2load, grpc_targets[n], body, duration, h2log, args.h2_clients, args.h2_streams)
            target = grpc_targets[n] if test == "bidi" else ws_urls[n]
            count = args.streams if test == "bidi" else args.connections
            return ["taskset", "-c", CLIENT_CPU, py, me, "--role", f"client-{test}", target, str(count),
                    f"{duration:g}", str(args.window)]

        def measure(test: str, n: str, duration: float) -> dict:
            h2log.unlink(missing_ok=True)
            text, cpu = run_load(procs, tmp, f"{test}-{n}", command(test, n, duration), duration + 30,
                                 envoy_pids[n], cpu1[n])
            if test == "unary":
                r = parse_h2load(text, h2log)
            else:
                r = json.loads(text.strip().splitlines()[-1])
                r["errors"] = len(r.pop("errors"))
            return {**r, **cpu}

        for test in tests:
            commands.append(f"{test}: {fmt_cmd(command(test, 'TARGET', args.duration)).replace(str(tmp), '$TMP')}")

        print(f"warm-up 1 s each: {' '.join(tests)} x {' '.join(SYSTEMS)}", flush=True)
        for test in tests:
            for n in SYSTEMS:
                measure(test, n, 1.0)

        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        steal0 = cpu_steal_snapshot()
        results: dict[str, dict[str, list[dict]]] = {t: {n: [] for n in SYSTEMS} for t in tests}
        for rnd in range(1, args.rounds + 1):
            for test in tests:
                for n in SYSTEMS:
                    r = measure(test, n, args.duration)
                    results[test][n].append(r)
                    lat = f"  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms" if "p50_ms" in r else ""
                    cpu = f"  Envoy CPU {r['envoy_pct']:.0f}%" if r["envoy_pct"] is not None else ""
                    print(f"round {rnd}/{args.rounds} {test:<5} {n}  {r['rate']:>9,.0f}/s{lat}  errors {r['errors']}"
                          f"{cpu}  CPU1 upstream {r['upstream_pct']:.0f}%", flush=True)

        if mg["proc"].poll() is not None or (get_status(mg["status_url"]) or {}).get("envoy", {}).get("pid") != mg["envoy_pid"]:
            print("WARNING: meshgate's Envoy restarted during the run; M figures are suspect", file=sys.stderr)
        steal1 = cpu_steal_snapshot()
        noise = {"load": load, "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                 "steal_pct": 100 * (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])}
        print_report(results, args, commands, noise, skipped)
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"results": results, "summary": {t: {n: summarize(results[t][n]) for n in SYSTEMS} for t in results}},
                indent=2))
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run_role(role: list[str]) -> int:
    kind, rest = role[0], role[1:]
    if kind == "serve-grpc":
        serve_grpc(int(rest[0]))
    elif kind in ("client-bidi", "client-ws"):
        target, count, duration, window = rest[0], int(rest[1]), float(rest[2]), int(rest[3])
        fn = client_bidi if kind == "client-bidi" else client_ws
        print(json.dumps(fn(target, count, duration, window)), flush=True)
    else:
        sys.exit(f"unknown role {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
