#!/usr/bin/env python3
"""Control-plane scale: how meshgate copes with many routes.

For each N (default 1,000 and 10,000 HTTPRoutes, one rule `Exact /r/<i>` each, over 100 Backends,
written as 100 files of N/100 documents plus a Gateway file and a Backends file):

1. translate: in a fresh Python process, wall time of load + validate + Gateway API translation
   (load_config, which builds the IR), the Envoy translation, Snapshot.build and the consistency check, and peak RSS
   (ru_maxrss) of that process;
2. push: `meshgate run` on the config; time from process start until /status shows the node
   `edge-local` runs the config built in step 1 (/status `in_sync` and `config_version`), peak RSS of the meshgate process (VmHWM) and RSS of its Envoy;
3. served change (largest N only): rewrite the file holding route r-5000 (os.replace) so its path
   alternates /r/5000 <-> /changed-5000, and time from the write until GET of the new path returns
   200 through Envoy (polled every 5 ms, at most 30 s).

Targets (10,000 routes): translate+push <= 1.5 s, one change served <= 100 ms (median), RSS <= 300 MB.
At 50,000 routes (`--sizes 10000,50000`) the same figures are reported.

Usage: .venv/bin/python bench/scale.py [--sizes 1000,10000] [--changes 5] [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import calendar
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Processes,
    in_sync,
    fmt_cmd,
    free_port,
    get_status,
    http_get,
    meshgate_cli,
    nginx_command,
    nginx_config,
    proc_mem_mb,
    sigterm_as_interrupt,
    wait_http_200,
)

BACKENDS = 100
FILES = 100
CHANGED_ROUTE = 5000  # the route the served-change test edits (route N//2 when N < 10,000)
TARGET_PUSH_S = 1.5
TARGET_CHANGE_MS = 100.0
TARGET_RSS_MB = 300.0
TARGET_N = 10_000
ROUTE_STATS = ["on"]  # meshgate run --route-stats (set by --route-stats)

ENV_LISTEN = "SCALE_LISTEN_PORT"
ENV_UPSTREAM = "SCALE_UPSTREAM_PORT"


# --- config generation ----------------------------------------------------------------------


def route_doc(i: int, path: str | None = None) -> str:
    return f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r-{i}}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{type: Exact, value: {path or f'/r/{i}'}}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: b-{i % BACKENDS}}}]
"""


def routes_file_text(n: int, file_index: int, overrides: dict[int, str]) -> str:
    per = n // FILES
    first = file_index * per
    return "---\n".join(route_doc(i, overrides.get(i)) for i in range(first, first + per))


def routes_file_name(file_index: int) -> str:
    return f"routes-{file_index:03d}.yaml"


def generate(config_dir: Path, n: int) -> None:
    """One Gateway, 100 Backends (all on the upstream's port), N HTTPRoutes in 100 files."""
    if n % FILES:
        raise SystemExit(f"N must be a multiple of {FILES}")
    config_dir.mkdir(parents=True)
    (config_dir / "gateway.yaml").write_text(f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners:
    - name: http
      protocol: HTTP
      port: ${{{ENV_LISTEN}}}
""")
    (config_dir / "backends.yaml").write_text("---\n".join(f"""\
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: b-{b}}}
spec:
  endpoints:
    - address: 127.0.0.1
      port: ${{{ENV_UPSTREAM}}}
""" for b in range(BACKENDS)))
    for f in range(FILES):
        (config_dir / routes_file_name(f)).write_text(routes_file_text(n, f, {}))


# --- step 1: in-process stages (runs in a fresh subprocess) ----------------------------------


def worker(config_dir: str, access_log: str, profile: bool) -> None:
    """Time each pipeline stage once; print one JSON line. Optionally cProfile the slowest stage."""
    import resource

    t = time.perf_counter()
    from meshgate.api.config import load_config
    from meshgate.xds.snapshot import Snapshot
    from meshgate.xds.translator import TranslateOptions, translate

    imports_s = time.perf_counter() - t
    rss_after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The options `meshgate run` uses, so the snapshot versions equal the ones it publishes.
    options = TranslateOptions(bind_address="127.0.0.1", access_log_path=access_log,
                               route_stats=ROUTE_STATS[0] == "on")

    stages: dict[str, float] = {}
    t = time.perf_counter()
    translation = load_config([config_dir])  # load, validate, Gateway API translation -> IR
    stages["load_config"] = time.perf_counter() - t
    t = time.perf_counter()
    resources = translate(translation.ir, options)
    stages["translate"] = time.perf_counter() - t
    t = time.perf_counter()
    snapshot = Snapshot.build(resources)
    stages["Snapshot.build"] = time.perf_counter() - t
    t = time.perf_counter()
    snapshot.check_consistent()  # SnapshotCache.set_snapshot runs this before publishing
    stages["check_consistent"] = time.perf_counter() - t

    out = {
        "imports_s": imports_s,
        "stages": stages,
        "rss_after_imports_mb": rss_after_imports,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "version": snapshot.version,
        "routes": sum(len(vh.routes) for rc in snapshot.names(
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration").values() for vh in rc.virtual_hosts),
        "route_config_bytes": sum(len(snapshot.packed(
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", n).value) for n in snapshot.names(
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration")),
    }
    if profile:
        import cProfile
        import io
        import pstats

        slowest = max(stages, key=stages.get)
        run = {
            "load_config": lambda: load_config([config_dir]),
            "translate": lambda: translate(translation.ir, options),
            "Snapshot.build": lambda: Snapshot.build(resources),
            "check_consistent": lambda: snapshot.check_consistent(),
        }[slowest]
        prof = cProfile.Profile()
        prof.runcall(run)
        text = []
        for order in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(order).print_stats(10)
            body = buf.getvalue()
            # keep the header line with the totals and the table
            lines = [ln for ln in body.splitlines() if ln.strip()]
            text.append(f"-- {slowest}: top 10 by {order} --\n" + "\n".join(lines[1:] if lines else lines))
        out["profile"] = {"stage": slowest, "text": "\n".join(text)}
    print(json.dumps(out))


def run_worker(config_dir: Path, access_log: Path, env: dict, profile: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(config_dir), "--access-log", str(access_log),
           "--route-stats", ROUTE_STATS[0]]
    if profile:
        cmd.append("--profile")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"stage worker failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --- step 2: push ---------------------------------------------------------------------------


def metric(status_url: str, name: str) -> float | None:
    code, body = http_get(status_url + "/metrics", timeout=5)
    m = re.search(rf"^{re.escape(name)}\s+(\S+)$", body.decode(), re.M) if code == 200 else None
    return float(m.group(1)) if m else None


def start_and_push(procs: Processes, tmp: Path, config_dir: Path, state: Path, env: dict,
                   expected: str, commands: list[str]) -> dict:
    xds_port, status_port = free_port(), free_port()
    cmd = [meshgate_cli(), "run", str(config_dir),
           "--xds-address", f"127.0.0.1:{xds_port}", "--status-address", f"127.0.0.1:{status_port}",
           "--admin-port", "0", "--state-dir", str(state), "--concurrency", "1",
           "--no-sample-upstreams", "--envoy-log-level", "warning", "--route-stats", ROUTE_STATS[0]]
    commands.append(f"{ENV_LISTEN}={env[ENV_LISTEN]} {ENV_UPSTREAM}={env[ENV_UPSTREAM]} {fmt_cmd(cmd)}")
    status_url = f"http://127.0.0.1:{status_port}"
    log = tmp / f"meshgate-{config_dir.name}.out"
    t0 = time.monotonic()
    proc = procs.start("meshgate run", cmd, log=log, env=env)
    marks: dict[str, float] = {}
    status = None
    hwm_seen = 0.0
    while True:
        now = time.monotonic() - t0
        if now > 120:
            raise RuntimeError(f"meshgate run did not get ACKs within 120 s; last /status: {status}")
        if proc.poll() is not None:
            raise RuntimeError(f"meshgate run exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        hwm_seen = max(hwm_seen, proc_mem_mb(proc.pid).get("VmHWM", 0.0))
        status = get_status(status_url, timeout=5)
        now = time.monotonic() - t0
        if status is not None:
            marks.setdefault("status_up", now)
            pid = status.get("envoy", {}).get("pid")
            if pid:
                marks.setdefault("envoy_live", now)
                procs.adopt("meshgate's Envoy", pid)
            if in_sync(status, expected):
                marks.setdefault("acked", now)
                if pid:  # /status names Envoy once its /ready says LIVE, which can follow the ACKs
                    break
        time.sleep(0.01)
    envoy_pid = status["envoy"]["pid"]
    return {
        "proc": proc, "status_url": status_url, "status": status, "marks": marks, "envoy_pid": envoy_pid,
        "meshgate_hwm_mb": max(hwm_seen, proc_mem_mb(proc.pid).get("VmHWM", 0.0)),
        "envoy_mem": proc_mem_mb(envoy_pid),
        "translation_s": metric(status_url, "meshgate_translation_seconds_sum"),
        "listen_port": int(env[ENV_LISTEN]),
        "log": log,
    }


# --- step 3: served change ------------------------------------------------------------------


def get_code(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def log_times(log: Path, after: float) -> dict[str, float]:
    """Wall-clock times (s) of the first "reloading" and "config published" lines of meshgate's
    JSON log written after `after`: where a change's time went (millisecond resolution)."""
    marks: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"msg": "config files changed, reloading"' not in line and '"msg": "config published"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        stamp, ms = entry["time"].rstrip("Z").split(".")
        t = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000
        if t + 0.001 < after:
            continue
        marks.setdefault("reloading" if "reloading" in entry["msg"] else "published", t)
    return marks


def served_changes(run: dict, config_dir: Path, staging: Path, n: int, repeats: int) -> list[dict]:
    port = run["listen_port"]
    route = CHANGED_ROUTE if n > CHANGED_ROUTE else n // 2
    file_index = route // (n // FILES)
    name = routes_file_name(file_index)
    paths = [f"/changed-{route}", f"/r/{route}"]
    staging.mkdir(exist_ok=True)
    results = []
    for k in range(repeats):
        new_path = paths[k % 2]
        if get_code(port, new_path) != 404:
            raise RuntimeError(f"{new_path} is already served before the change")
        before = get_status(run["status_url"])
        translation_before = metric(run["status_url"], "meshgate_translation_seconds_sum") or 0.0
        overrides = {route: new_path} if new_path != f"/r/{route}" else {}
        tmp_file = staging / name
        tmp_file.write_text(routes_file_text(n, file_index, overrides))
        written = time.time()
        os.replace(tmp_file, config_dir / name)
        t0 = time.perf_counter()
        deadline = t0 + 30
        polls = 0
        code = 0
        while time.perf_counter() < deadline:
            polls += 1
            try:
                code = get_code(port, new_path)
            except OSError:
                code = 0
            if code == 200:
                break
            time.sleep(0.005)
        served_ms = (time.perf_counter() - t0) * 1000
        if code != 200:
            raise RuntimeError(f"{new_path} not served within 30 s (last HTTP {code})")
        # Settle: wait until the new config is ACKed for all types before the next change.
        settle_deadline = time.monotonic() + 30
        status = before
        while time.monotonic() < settle_deadline:
            status = get_status(run["status_url"])
            if status and status["config_version"] != before["config_version"] and in_sync(status):
                break
            time.sleep(0.01)
        translation_after = metric(run["status_url"], "meshgate_translation_seconds_sum") or 0.0
        marks = log_times(run["log"], written)
        # write -> "reloading" (inotify + settle), -> "config published" (the reload), -> served
        # (ADS push, Envoy applying the update, the 5 ms poll); from the log's ms timestamps.
        settle_ms = (marks["reloading"] - written) * 1000 if "reloading" in marks else float("nan")
        to_publish_ms = (marks["published"] - written) * 1000 if "published" in marks else float("nan")
        results.append({"path": new_path, "served_ms": served_ms, "polls": polls,
                        "reload_ms": (translation_after - translation_before) * 1000,
                        "settle_ms": settle_ms, "published_ms": to_publish_ms})
        print(f"  change {k + 1}/{repeats}: {new_path:<16} served after {served_ms:8.1f} ms "
              f"(meshgate reload {results[-1]['reload_ms']:.0f} ms; reloading at {settle_ms:.0f} ms, "
              f"published at {to_publish_ms:.0f} ms)", flush=True)
        time.sleep(0.3)
    return results


# --- report ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_report(rows: dict[int, dict], changes: tuple[int, list[dict]] | None, commands: list[str]) -> None:
    print()
    print("translate (fresh process per N; seconds)")
    stage_names = ["load_config", "translate", "Snapshot.build", "check_consistent"]
    header = f"{'N routes':>9} " + " ".join(f"{s:>16}" for s in stage_names) + f" {'total':>8} {'peak RSS MB':>12}"
    print(header)
    print("-" * len(header))
    for n, r in rows.items():
        st = r["worker"]["stages"]
        print(f"{n:>9,} " + " ".join(f"{st[s]:>16.3f}" for s in stage_names)
              + f" {sum(st.values()):>8.3f} {r['worker']['peak_rss_mb']:>12.1f}")
    print("  (load_config = load + validate + Gateway API translation to IR; translate = IR -> Envoy; imports before timing: "
          + ", ".join(f"{r['worker']['imports_s']:.2f} s / {r['worker']['rss_after_imports_mb']:.0f} MB"
                      for r in rows.values()) + ")")
    print()
    print("push: `meshgate run` start -> all four xDS types ACKed by edge-local (seconds since process start)")
    header = (f"{'N routes':>9} {'/status up':>11} {'Envoy LIVE':>11} {'all ACKed':>10} {'reload in-proc':>15}"
              f" {'meshgate HWM MB':>16} {'Envoy RSS MB':>13} {'RDS bytes':>10}")
    print(header)
    print("-" * len(header))
    for n, r in rows.items():
        p = r["push"]
        m = p["marks"]
        print(f"{n:>9,} {m.get('status_up', float('nan')):>11.2f} {m.get('envoy_live', float('nan')):>11.2f} "
              f"{m['acked']:>10.2f} {p['translation_s'] or float('nan'):>15.2f} {p['meshgate_hwm_mb']:>16.1f} "
              f"{p['envoy_mem'].get('VmRSS', float('nan')):>13.1f} {r['worker']['route_config_bytes']:>10,}")
    print("  (/status up = imports + first reload done; 'reload in-proc' = meshgate_translation_seconds_sum,"
          " i.e. load+compile+snapshot inside meshgate run)")
    if changes:
        n, ch = changes
        served = [c["served_ms"] for c in ch]
        print()
        print(f"served change at N={n:,}: write -> new path 200 through Envoy (ms)")
        print("  " + "  ".join(f"{c['path']}: {c['served_ms']:.0f} (reload {c['reload_ms']:.0f})" for c in ch))
        print(f"  median {statistics.median(served):.0f} ms, max {max(served):.0f} ms")
        med = lambda key: statistics.median(c[key] for c in ch)  # noqa: E731
        print(f"  medians: write -> reload starts {med('settle_ms'):.0f} ms (inotify + settle window), "
              f"reload {med('reload_ms'):.0f} ms, write -> published {med('published_ms'):.0f} ms, "
              f"published -> served {med('served_ms') - med('published_ms'):.0f} ms (ADS push + Envoy applying it)")

    print()
    print(f"targets (N = {TARGET_N:,}; meshgate run --route-stats {ROUTE_STATS[0]})")
    t = rows.get(TARGET_N)
    if t is None:
        print(f"  N = {TARGET_N:,} not measured (quick run); figures at N = {max(rows):,} for reference:")
        t = rows[max(rows)]
    st = t["worker"]["stages"]
    push = t["push"]["marks"]["acked"]
    in_proc = sum(st.values())
    print(f"  {f'translate+push <= {TARGET_PUSH_S:g} s':<30} {verdict(push <= TARGET_PUSH_S)}  {push:.2f} s from process start to all "
          f"ACKed (translate alone {in_proc:.2f} s in a fresh process)")
    if changes:
        served = [c["served_ms"] for c in changes[1]]
        med = statistics.median(served)
        print(f"  {f'one change served <= {TARGET_CHANGE_MS:g} ms':<30} {verdict(med <= TARGET_CHANGE_MS)}  median {med:.0f} ms, "
              f"max {max(served):.0f} ms ({len(served)} changes)")
    rss = max(t["push"]["meshgate_hwm_mb"], t.get("meshgate_hwm_end_mb", 0.0))
    print(f"  {'RSS <= 300 MB':<30} {verdict(rss <= TARGET_RSS_MB)}  meshgate run peak {rss:.0f} MB "
          f"(VmHWM; translate-only process {t['worker']['peak_rss_mb']:.0f} MB; "
          f"Envoy {t['push']['envoy_mem'].get('VmRSS', float('nan')):.0f} MB)")
    profiles = [(n, r["worker"]["profile"]) for n, r in rows.items() if "profile" in r["worker"]]
    for n, prof in profiles:
        print()
        print(f"cProfile of the slowest stage at N={n:,} ({prof['stage']}):")
        print(prof["text"])
    print()
    print("commands:")
    for c in commands:
        print(f"  {c}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000", help="comma-separated route counts (multiples of 100)")
    ap.add_argument("--changes", type=int, default=5, help="served-change repetitions at the largest N")
    ap.add_argument("--quick", action="store_true", help="N = 1,000 only, 2 changes")
    ap.add_argument("--profile", action="store_true", help="cProfile the slowest stage at the largest N")
    ap.add_argument("--json", metavar="FILE", help="also write raw results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--route-stats", choices=["on", "off"], default="on",
                    help="meshgate run --route-stats: Envoy statistics per rule (default on, as meshgate's default)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--access-log", help=argparse.SUPPRESS)
    args = ap.parse_args()
    ROUTE_STATS[0] = args.route_stats
    if args.worker:
        worker(args.worker, args.access_log, args.profile)
        return 0
    sizes = [1000] if args.quick else [int(s.replace("_", "")) for s in args.sizes.split(",")]
    if args.quick:
        args.changes = 2
    sigterm_as_interrupt()

    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-scale-"))
    procs = Processes()
    commands: list[str] = []
    rows: dict[int, dict] = {}
    changes = None
    try:
        upstream_port = free_port()
        conf = nginx_config(tmp, upstream_port)
        cmd = nginx_command(tmp, conf, None)
        commands.append(f"upstream: {fmt_cmd(cmd)}")
        nginx = procs.start("nginx", cmd, log=tmp / "nginx.out")
        wait_http_200(f"http://127.0.0.1:{upstream_port}/", 10, nginx, "nginx")

        for n in sizes:
            config_dir = tmp / f"routes-{n}"
            generate(config_dir, n)
            state = tmp / f"state-{n}"
            env = dict(os.environ, **{ENV_LISTEN: str(free_port()), ENV_UPSTREAM: str(upstream_port)})
            print(f"N={n:,}: translating in a fresh process ...", flush=True)
            w = run_worker(config_dir, (state / "access.log").resolve(), env, args.profile and n == max(sizes))
            if w["routes"] != n:
                raise RuntimeError(f"expected {n} routes in the snapshot, got {w['routes']}")
            print(f"N={n:,}: {', '.join(f'{k} {v:.3f} s' for k, v in w['stages'].items())}; "
                  f"peak RSS {w['peak_rss_mb']:.0f} MB", flush=True)
            print(f"N={n:,}: meshgate run ...", flush=True)
            run = start_and_push(procs, tmp, config_dir, state, env, w["version"], commands)
            if run["status"]["config_version"] != w["version"]:
                raise RuntimeError(f"meshgate published {run['status']['config_version']}, the worker built "
                                   f"{w['version']}: the benchmark's TranslateOptions differ from meshgate run's")
            code = get_code(run["listen_port"], f"/r/{n - 1}")
            if code != 200:
                raise RuntimeError(f"GET /r/{n - 1} through meshgate's Envoy returned {code}")
            print(f"N={n:,}: all ACKed {run['marks']['acked']:.2f} s after start; meshgate peak RSS "
                  f"{run['meshgate_hwm_mb']:.0f} MB, Envoy RSS {run['envoy_mem'].get('VmRSS', 0):.0f} MB", flush=True)
            row = {"worker": w, "push": run}
            if n == max(sizes) and args.changes > 0:
                ch = served_changes(run, config_dir, tmp / "staging", n, args.changes)
                changes = (n, ch)
                row["meshgate_hwm_end_mb"] = proc_mem_mb(run["proc"].pid).get("VmHWM", 0.0)
                row["push"]["envoy_mem"] = proc_mem_mb(run["envoy_pid"]) or row["push"]["envoy_mem"]
            rows[n] = row
            procs.stop(run["proc"])
            procs.procs.remove(("meshgate run", run["proc"]))
            shutil.rmtree(config_dir, ignore_errors=True)

        print_report(rows, changes, commands)
        if args.json:
            def clean(row):
                p = {k: v for k, v in row["push"].items() if k not in ("proc", "status")}
                return {**row, "push": p}

            Path(args.json).write_text(json.dumps({"rows": {n: clean(r) for n, r in rows.items()},
                                                   "changes": changes}, indent=2, default=str))
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


if __name__ == "__main__":
    sys.exit(main())
