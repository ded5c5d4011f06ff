#!/usr/bin/env python3
"""Data-plane overhead of meshgate's generated Envoy config.

Measures, in one run, alternating A B [B+log] C, A B [B+log] C, ... (rounds):

  A       direct: wrk -> nginx
  B       hand-written minimal static Envoy (bench/static-envoy.yaml) -> nginx
  B+log   B plus a JSON file access log identical to meshgate's (the access log's cost)
  C       `meshgate run` (control plane + its Envoy, config over ADS) -> nginx

Envoy (every variant) runs with --concurrency 1 pinned to CPU 0; nginx (worker_processes 1),
wrk (-t1) and the meshgate Python process are pinned to CPU 1. All on 127.0.0.1, free ports.

Usage: .venv/bin/python bench/proxy.py [--rounds 3] [--duration 10] [--quick] [--no-log-variant]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
    NGINX_BODY,
    Processes,
    in_sync,
    fmt_cmd,
    free_port,
    get_status,
    http_get,
    meshgate_cli,
    need,
    nginx_command,
    nginx_config,
    sigterm_as_interrupt,
    wait_http_200,
)

ENVOY_CPU = "0"
CLIENT_CPU = "1"  # wrk, nginx, meshgate's Python process

MESHGATE_CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners:
    - name: http
      protocol: HTTP
      port: ${BENCH_LISTEN_PORT}
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: app}
spec:
  endpoints:
    - address: 127.0.0.1
      port: ${BENCH_UPSTREAM_PORT}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: app}]
"""

LABELS = {
    "A": "A  direct (wrk -> nginx)",
    "B": "B  hand-written Envoy",
    "B+log": "B+log  hand-written + JSON access log",
    "C": "C  meshgate run (access log on)",
    "C-nolog": "C-nolog  meshgate run --access-log off",
}


# --- wrk ------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not m:
        raise ValueError(f"unparsable wrk latency {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text: str) -> dict:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not (rps and p50 and p99):
        raise RuntimeError(f"could not parse wrk output:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": _ms(p50.group(1)),
        "p99_ms": _ms(p99.group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


def wrk_command(url: str, duration: float, connections: int) -> list[str]:
    return ["taskset", "-c", CLIENT_CPU, need("wrk", "wrk"), "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", url]


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(procs: Processes, tmp: Path, url: str, duration: float, connections: int,
            proxy_pid: int | None = None) -> dict:
    out = tmp / "wrk.out"
    out.unlink(missing_ok=True)
    cpu0, t0 = cpu_seconds(proxy_pid), time.monotonic()
    proc = procs.start("wrk", wrk_command(url, duration, connections), log=out)
    try:
        proc.wait(duration + 30)
    finally:
        procs.stop(proc)
        procs.procs.remove(("wrk", proc))
    cpu = (cpu_seconds(proxy_pid) - cpu0) / (time.monotonic() - t0)
    text = out.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text}")
    return {**parse_wrk(text), "proxy_cpu_pct": 100 * cpu if proxy_pid else None}


# --- the systems under test -----------------------------------------------------------------


def envoy_binary() -> str:
    from meshgate.envoy.process import find_envoy

    return find_envoy()


def static_envoy_config(tmp: Path, name: str, listen_port: int, upstream_port: int, access_log: Path | None) -> Path:
    import yaml

    text = string.Template((BENCH / "static-envoy.yaml").read_text()).substitute(
        LISTEN_PORT=listen_port, UPSTREAM_PORT=upstream_port
    )
    config = yaml.safe_load(text)
    if access_log is not None:
        # The same JSON access log meshgate configures (format imported, not copied).
        from meshgate.xds.translator import ACCESS_LOG_FORMAT

        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"] = [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(access_log),
                "log_format": {"json_format": dict(ACCESS_LOG_FORMAT)},
            },
        }]
    path = tmp / f"envoy-{name}.json"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML; Envoy picks the parser by extension
    return path


def start_static_envoy(procs: Processes, tmp: Path, name: str, upstream_port: int, access_log: Path | None,
                       commands: list[str]) -> tuple[int, int]:
    port = free_port()
    config = static_envoy_config(tmp, name, port, upstream_port, access_log)
    cmd = ["taskset", "-c", ENVOY_CPU, envoy_binary(), "-c", str(config), "--concurrency", "1",
           "-l", "warning", "--log-path", str(tmp / f"envoy-{name}.log"), "--use-dynamic-base-id"]
    if access_log is not None:
        cmd += ["--file-flush-interval-msec", "500"]  # as meshgate run does
    commands.append(f"{name}: {fmt_cmd(cmd)}")
    proc = procs.start(f"envoy {name}", cmd, log=tmp / f"envoy-{name}.out")
    wait_http_200(f"http://127.0.0.1:{port}/", 20, proc, f"Envoy ({name})")
    return port, proc.pid  # taskset execs Envoy: same PID


def start_meshgate(procs: Processes, tmp: Path, upstream_port: int, commands: list[str],
                   name: str = "C", extra: tuple[str, ...] = (), ready_path: str = "/",
                   env: dict[str, str] | None = None) -> dict:
    port, xds_port, status_port = free_port(), free_port(), free_port()
    config_dir = tmp / f"meshgate-config-{name}"
    config_dir.mkdir()
    (config_dir / "bench.yaml").write_text(MESHGATE_CONFIG)
    settings = {**(env or {}), "BENCH_LISTEN_PORT": str(port), "BENCH_UPSTREAM_PORT": str(upstream_port)}
    state = tmp / f"meshgate-state-{name}"
    cmd = ["taskset", "-c", CLIENT_CPU, meshgate_cli(), "run", str(config_dir),
           "--xds-address", f"127.0.0.1:{xds_port}", "--status-address", f"127.0.0.1:{status_port}",
           "--admin-port", "0", "--state-dir", str(state), "--concurrency", "1",
           "--no-sample-upstreams", "--envoy-log-level", "warning", *extra]
    commands.append(f"{name}: {' '.join(f'{k}={v}' for k, v in settings.items())} {fmt_cmd(cmd)}")
    proc = procs.start(f"meshgate run {name}", cmd, log=tmp / f"meshgate-{name}.out", env={**os.environ, **settings})
    status_url = f"http://127.0.0.1:{status_port}"
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"meshgate run exited with {proc.returncode}:\n{(tmp / f'meshgate-{name}.out').read_text()[-3000:]}")
        status = get_status(status_url)
        if status and status.get("envoy", {}).get("pid") and in_sync(status):
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"meshgate run not ready in 60 s; last /status: {status}")
    envoy_pid = status["envoy"]["pid"]
    procs.adopt(f"meshgate's Envoy ({name})", envoy_pid)
    # Envoy inherited CPU 1 from the meshgate process; move it and all its threads to CPU 0.
    pin = ["taskset", "-apc", ENVOY_CPU, str(envoy_pid)]
    subprocess.run(pin, check=True, stdout=subprocess.DEVNULL)
    commands.append(f"{name}: {fmt_cmd(pin[:3])} <envoy pid from /status>   (all threads)")
    wait_http_200(f"http://127.0.0.1:{port}{ready_path}", 20, proc, "meshgate's Envoy")
    return {"port": port, "proc": proc, "status": status, "envoy_pid": envoy_pid, "status_url": status_url}


def thread_cpus(pid: int) -> set[str]:
    cpus = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                cpus.add(line.split(":", 1)[1].strip())
    return cpus


def meshgate_access_log(status: dict) -> dict:
    """What meshgate's running Envoy does for access logging, from its admin /config_dump."""
    admin = status["envoy"]["admin"]
    code, body = http_get(admin + "/config_dump?resource=dynamic_listeners", timeout=5)
    dump = json.loads(body) if code == 200 else {}
    paths = re.findall(r'"envoy\.access_loggers\.file".*?"path":\s*"([^"]+)"', json.dumps(dump), re.S)
    return {"on": bool(paths), "paths": sorted(set(paths)), "file": status["envoy"].get("access_log")}


def file_size(path: str | Path | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def truncate(path: str | Path | None) -> None:
    # Envoy opens access logs with O_APPEND, so truncating in place is safe; keeps /tmp small.
    if path and os.path.exists(path):
        os.truncate(path, 0)


def cpu_steal_snapshot() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat: time the hypervisor took from this VM."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


# --- report ---------------------------------------------------------------------------------


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for name, runs in results.items():
        rps = [r["rps"] for r in runs]
        out[name] = {
            "rps": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "p50": statistics.median(r["p50_ms"] for r in runs),
            "p99": statistics.median(r["p99_ms"] for r in runs),
            "errors": sum(r["non2xx"] + r["socket_errors"] for r in runs),
            "cpu": statistics.median(r["proxy_cpu_pct"] for r in runs) if runs[0]["proxy_cpu_pct"] is not None else None,
            # Envoy CPU time per request: less sensitive than RPS to a load generator that falls short.
            "us_per_req": (statistics.median(r["proxy_cpu_pct"] / 100 / r["rps"] * 1e6 for r in runs)
                           if runs[0]["proxy_cpu_pct"] is not None else None),
        }
    return out


def print_report(results, order, args, commands, access, log_growth, noise) -> None:
    s = summarize(results)
    rounds = len(next(iter(results.values())))
    print()
    print(f"meshgate data-plane overhead: {rounds} round(s) x {args.duration:g} s per config, "
          f"wrk -t1 -c{args.connections}, order {' '.join(order)} per round")
    print(f"Envoy --concurrency 1 on CPU {ENVOY_CPU}; nginx, wrk, meshgate (Python) on CPU {CLIENT_CPU}; "
          f"{os.cpu_count()} CPUs")
    print(f"noise: load average {noise['load']} before the run; CPU steal during it {noise['steal_pct']:.1f}% "
          "(a wide min-max or steal above ~1% means other work shared the machine)")
    print()
    header = (f"{'config':<40} {'RPS median (min-max)':>28} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
              f" {'Envoy CPU':>10} {'Envoy us/req':>13}")
    print(header)
    print("-" * len(header))
    for name in order:
        r = s[name]
        span = f"{r['rps']:,.0f} ({r['rps_min']:,.0f}-{r['rps_max']:,.0f})"
        cpu = f"{r['cpu']:.0f}%" if r["cpu"] is not None else "-"
        us = f"{r['us_per_req']:.1f}" if r["us_per_req"] is not None else "-"
        print(f"{LABELS[name]:<40} {span:>28} {r['p50']:>8.3f} {r['p99']:>8.3f} {r['errors']:>7} {cpu:>10} {us:>13}")
    print()
    print("per round (RPS / p99 ms):")
    for name in order:
        cells = "  ".join(f"{r['rps']:>9,.0f} / {r['p99_ms']:.3f}" for r in results[name])
        print(f"  {name:<6} {cells}")
    print()

    def ratio(a, b, key):
        return s[a][key] / s[b][key] if s[b][key] else float("nan")

    print("ratios (median/median):                  RPS     p99")
    print(f"  meshgate, log off / hand-written (C-nolog / B) {ratio('C-nolog', 'B', 'rps'):>6.3f}x  {ratio('C-nolog', 'B', 'p99'):>6.3f}x   <- like for like")
    print(f"  meshgate / hand-written  (C / B)     {ratio('C', 'B', 'rps'):>6.3f}x  {ratio('C', 'B', 'p99'):>6.3f}x")
    print(f"  meshgate / direct        (C / A)     {ratio('C', 'A', 'rps'):>6.3f}x  {ratio('C', 'A', 'p99'):>6.3f}x")
    print(f"  hand-written / direct    (B / A)     {ratio('B', 'A', 'rps'):>6.3f}x  {ratio('B', 'A', 'p99'):>6.3f}x")
    print(f"  Envoy CPU per request    (C / B)     {ratio('C', 'B', 'us_per_req'):>6.3f}x")
    if "B+log" in s:
        print(f"  access log cost      (B+log / B)     {ratio('B+log', 'B', 'rps'):>6.3f}x  {ratio('B+log', 'B', 'p99'):>6.3f}x")
        print(f"  meshgate / B+log     (C / B+log)     {ratio('C', 'B+log', 'rps'):>6.3f}x  {ratio('C', 'B+log', 'p99'):>6.3f}x")
    print()
    state = "ON" if access["on"] else "off"
    print(f"meshgate's Envoy access log: {state} (JSON, file {', '.join(access['paths']) or '-'}; "
          f"written during C rounds: {log_growth.get('C', 0) / 1e6:.1f} MB); "
          "C includes its cost" + (" (compare with B+log); C-nolog runs with --access-log off." if "B+log" in s else "."))
    if "B+log" in s:
        print(f"B+log access log written: {log_growth.get('B+log', 0) / 1e6:.1f} MB")
    print()
    print("commands:")
    for c in commands:
        print(f"  {c}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of unrecorded load per config first")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round of 2 s, 1 s warm-up")
    ap.add_argument("--no-log-variant", action="store_true", help="skip B+log")
    ap.add_argument("--json", metavar="FILE", help="also write raw results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 1.0
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs (Envoy on CPU 0, client and upstream on CPU 1)")
    need("wrk", "wrk")
    need("taskset", "util-linux")
    sigterm_as_interrupt()

    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-proxy-"))
    procs = Processes()
    commands: list[str] = []
    try:
        upstream_port = free_port()
        conf = nginx_config(tmp, upstream_port)
        cmd = nginx_command(tmp, conf, CLIENT_CPU)
        commands.append(f"upstream: {fmt_cmd(cmd)}   ({conf.name}: worker_processes 1, return 200 "
                        f"{NGINX_BODY.strip()!r}, access_log off, keepalive)")
        nginx = procs.start("nginx", cmd, log=tmp / "nginx.out")
        wait_http_200(f"http://127.0.0.1:{upstream_port}/", 10, nginx, "nginx")

        urls = {"A": f"http://127.0.0.1:{upstream_port}/"}
        pids: dict[str, int | None] = {"A": None}
        b_port, pids["B"] = start_static_envoy(procs, tmp, "B", upstream_port, None, commands)
        urls["B"] = f"http://127.0.0.1:{b_port}/"
        log_files: dict[str, str | Path | None] = {}
        if not args.no_log_variant:
            log_files["B+log"] = tmp / "access-B+log.log"
            bl_port, pids["B+log"] = start_static_envoy(procs, tmp, "B+log", upstream_port, log_files["B+log"], commands)
            urls["B+log"] = f"http://127.0.0.1:{bl_port}/"
        mg = start_meshgate(procs, tmp, upstream_port, commands)
        urls["C"] = f"http://127.0.0.1:{mg['port']}/"
        pids["C"] = mg["envoy_pid"]
        nolog = start_meshgate(procs, tmp, upstream_port, commands, "C-nolog", ("--access-log", "off"))
        urls["C-nolog"] = f"http://127.0.0.1:{nolog['port']}/"
        pids["C-nolog"] = nolog["envoy_pid"]
        access = meshgate_access_log(mg["status"])
        log_files["C"] = access["paths"][0] if access["paths"] else None
        cpus = thread_cpus(mg["envoy_pid"])
        if cpus != {ENVOY_CPU}:
            raise RuntimeError(f"meshgate's Envoy threads are not all on CPU {ENVOY_CPU}: {cpus}")

        order = [n for n in ("A", "B", "B+log", "C", "C-nolog") if n in urls]
        commands.append(f"load: {fmt_cmd(wrk_command('URL', args.duration, args.connections))}")
        if args.warmup > 0:
            print(f"warm-up {args.warmup:g} s each: {' '.join(order)}", flush=True)
            for name in order:
                run_wrk(procs, tmp, urls[name], args.warmup, args.connections)
        for f in log_files.values():
            truncate(f)

        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        steal0 = cpu_steal_snapshot()
        results: dict[str, list[dict]] = {n: [] for n in order}
        log_growth: dict[str, int] = {}
        for rnd in range(1, args.rounds + 1):
            for name in order:
                r = run_wrk(procs, tmp, urls[name], args.duration, args.connections, pids[name])
                results[name].append(r)
                if name in log_files:
                    time.sleep(0.6)  # let Envoy flush (interval 500 ms)
                    log_growth[name] = log_growth.get(name, 0) + file_size(log_files[name])
                    truncate(log_files[name])
                cpu = f"  Envoy CPU {r['proxy_cpu_pct']:.0f}%" if r["proxy_cpu_pct"] is not None else ""
                print(f"round {rnd}/{args.rounds} {name:<6} {r['rps']:>10,.0f} req/s  p50 {r['p50_ms']:.3f} ms  "
                      f"p99 {r['p99_ms']:.3f} ms  errors {r['non2xx'] + r['socket_errors']}{cpu}", flush=True)

        if mg["proc"].poll() is not None or get_status(mg["status_url"])["envoy"]["pid"] != mg["envoy_pid"]:
            print("WARNING: meshgate's Envoy restarted during the run; C figures are suspect", file=sys.stderr)
        steal1 = cpu_steal_snapshot()
        noise = {"load": load, "steal_pct": 100 * (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])}
        print_report(results, order, args, commands, access, log_growth, noise)
        if args.json:
            Path(args.json).write_text(json.dumps({"results": results, "summary": summarize(results)}, indent=2))
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
