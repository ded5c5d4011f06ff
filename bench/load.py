#!/usr/bin/env python3
"""Config loading: how long `load_documents` takes to read N HTTPRoutes, and the memory it holds.

The config is `bench/scale.py`'s (one Gateway and 100 Backends using ${VAR}s, N routes in 100
files). For each N (default 10,000 and 50,000) and each loader path, a fresh Python process runs
`load_documents([dir], cache=DocumentCache())` `--rounds` times and reports:

- load: the first load (cold) and the best of the rounds;
- peak RSS: ru_maxrss after the first load, minus the RSS after imports (what loading costs);
- held: RSS with the documents alive, minus the RSS after imports;
- first locate: one `SourceDocument.locate` on a document whose positions were not needed yet
  (the fast path composes that file's positions then; the old path has them already).

Paths: "fast" is the default loader (plain YAML parsed straight to data, positions on first
need); "old" sets `meshgate.providers.file.loader.FAST_PATH = False` (PyYAML nodes and positions
for every document, as before the fast path).

Usage: .venv/bin/python bench/load.py [--sizes 10000,50000] [--rounds 3] [--paths fast,old]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker(config_dir: str, path: str, rounds: int) -> None:
    import resource

    import meshgate.api.config  # noqa: F401 - imported before the first load, as by `meshgate run`
    from meshgate.providers.file import loader

    if path == "old":
        loader.FAST_PATH = False
    base_rss = rss_mb()
    t = time.perf_counter()
    documents, errors = loader.load_documents([config_dir], cache=loader.DocumentCache())
    cold = time.perf_counter() - t
    if errors:
        raise SystemExit(f"unexpected errors: {errors[:3]}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    held = rss_mb() - base_rss
    # A route in the middle of a routes file: its positions were not needed yet.
    target = documents[len(documents) // 2]
    t = time.perf_counter()
    located = target.locate(("spec", "rules", 0, "matches"))
    first_locate = time.perf_counter() - t
    count = len(documents)
    del documents, target
    times = [cold]
    for _ in range(rounds - 1):
        t = time.perf_counter()
        loader.load_documents([config_dir], cache=loader.DocumentCache())
        times.append(time.perf_counter() - t)
    print(json.dumps({"documents": count, "cold_s": cold, "best_s": min(times), "peak_mb": peak,
                      "held_mb": held, "first_locate_s": first_locate, "located": located}))


def run_worker(config_dir: Path, path: str, rounds: int) -> dict:
    env = dict(os.environ, **{scale.ENV_LISTEN: "8080", scale.ENV_UPSTREAM: "9000"})
    cmd = [sys.executable, __file__, "--worker", str(config_dir), "--path", path, "--rounds", str(rounds)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"worker failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,50000", help="comma-separated route counts (multiples of 100)")
    ap.add_argument("--rounds", type=int, default=3, help="loads per process (the first is reported apart)")
    ap.add_argument("--paths", default="fast,old", help="loader paths to compare: fast, old")
    ap.add_argument("--quick", action="store_true", help="N = 1,000 only, 1 round")
    ap.add_argument("--json", metavar="FILE", help="also write raw results as JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.path, args.rounds)
        return 0
    sizes = [1000] if args.quick else [int(s.replace("_", "")) for s in args.sizes.split(",")]
    rounds = 1 if args.quick else args.rounds
    paths = args.paths.split(",")

    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-load-"))
    results: dict[int, dict[str, dict]] = {}
    try:
        for n in sizes:
            config_dir = tmp / f"routes-{n}"
            scale.generate(config_dir, n)
            results[n] = {}
            for path in paths:
                print(f"N={n:,} {path}: loading in a fresh process ...", flush=True)
                results[n][path] = run_worker(config_dir, path, rounds)
            shutil.rmtree(config_dir, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"load_documents([dir], cache=DocumentCache()), {rounds} round(s) per process "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    header = f"{'routes':>7} {'path':<5} {'docs':>6} {'first load':>11} {'best':>8} {'peak RSS':>9} {'held':>8} {'first locate':>13}"
    print(header)
    print("-" * len(header))
    for n, by_path in results.items():
        for path, r in by_path.items():
            print(f"{n:>7,} {path:<5} {r['documents']:>6,} {r['cold_s']:>9.3f} s {r['best_s']:>6.3f} s "
                  f"{r['peak_mb']:>6.0f} MB {r['held_mb']:>5.0f} MB {r['first_locate_s'] * 1000:>10.1f} ms")
        if "fast" in by_path and "old" in by_path:
            f, o = by_path["fast"], by_path["old"]
            print(f"{'':>7} old/fast: load x{o['best_s'] / f['best_s']:.1f}, "
                  f"peak RSS x{o['peak_mb'] / max(f['peak_mb'], 1):.1f}")
    print(f"command: {sys.executable} {' '.join(sys.argv)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
