#!/usr/bin/env python3
"""Memory over many reloads: a `ControlPlane` (no Envoy) reloads a 1,000-route config 1,000 times,
one route file edited each time (every third edit invalid), and RSS is printed as it goes. The
control plane must not grow: what reloads leave in reference cycles is collected when reloads
pause (see `ControlPlane.collect_garbage`), which this run triggers every 100 reloads.

Usage: .venv/bin/python bench/reloads.py [--routes 1000] [--reloads 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale  # noqa: E402  (its config generator)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--reloads", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("SCALE_LISTEN_PORT", "8080")
    os.environ.setdefault("SCALE_UPSTREAM_PORT", "9000")
    from meshgate.controlplane.pipeline import ControlPlane
    from meshgate.xds.snapshot import SnapshotCache

    with tempfile.TemporaryDirectory(prefix="meshgate-bench-reloads-") as tmp:
        config = Path(tmp) / "routes"
        scale.generate(config, args.routes)
        target = config / scale.routes_file_name(0)
        original = target.read_text()
        plane = ControlPlane([str(config)], SnapshotCache())
        await plane.reload_in_thread()
        plane.collect_garbage()
        start = rss_mb()
        print(f"{args.routes:,} routes; after the first reload: RSS {start:.1f} MB")
        began = time.perf_counter()
        for i in range(1, args.reloads + 1):
            text = original.replace("/r/0\n", f"/r/0-{i}\n") if i % 3 else original + "bad: [\n"
            target.write_text(text)
            os.utime(target, (i, i))
            await plane.reload_in_thread()
            if i % 100 == 0:
                plane.collect_garbage()
                print(f"  reload {i:>5}: RSS {rss_mb():.1f} MB")
        elapsed = time.perf_counter() - began
        growth = rss_mb() - start
        print(f"{args.reloads} reloads in {elapsed:.1f} s ({1000 * elapsed / args.reloads:.1f} ms each); "
              f"RSS grew {growth:+.1f} MB")


if __name__ == "__main__":
    asyncio.run(main())
