"""BackendTrafficPolicy `rateLimit.global` in mode Budget through real parts: Envoy's
`rate_limit_quota` filter (RLQS, which Envoy marks work-in-progress) in two `meshgate run` (two
Envoys, two edge companions, as two replicas of a Gateway) and one real Redis holding each Envoy's
demand. No call per request: each Envoy enforces the token bucket its companion assigned, resized
every second from the usage both Envoys report.

The accuracy test offers uneven load (70% through one Envoy, 30% through the other, twice the
limit in total) and measures what is let through over 10 s, after a 4 s warm-up (assignments
follow the reports, 1 s apart): per user (two users with their own budgets) and per route. The
bound is ±10% of the configured rate: generous against Python's pacing jitter and one report of
lag, tight enough that a limit held per Envoy (each letting the full rate through: +100% here) or
a share frozen at 50/50 (the 30% Envoy wasting part of its half: -20%) fails it.

Then a quota server down: Envoy keeps its configured no-assignment behaviour for new buckets
(allow all by default; deny all with failClosed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from harness import Meshgate, pid_alive, request, wait_until
from redis_server import RedisServer, gateways_sharing, redis_server  # noqa: F401 - the module fixture

CONFIG = Path(__file__).parent / "e2e" / "global_quota"
WARMUP_S, MEASURE_S = 4.0, 10.0
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def gws(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer):
    yield from gateways_sharing(redis_server, CONFIG, tmp_path_factory, "global-quota")


async def _stream(session: aiohttp.ClientSession, port: int, path: str, headers: dict, rate: float,
                  start: float, end: float, measure_from: float, counts: dict) -> None:
    """Open-loop load: one request every 1/rate s (each in its own task, so a slow answer does not
    slow the schedule); responses sent in the measurement window are counted by status."""
    tasks = []
    n = 0

    async def one(sent_at: float) -> None:
        try:
            async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            status = 0
        if sent_at >= measure_from:
            counts[status] = counts.get(status, 0) + 1

    loop = asyncio.get_running_loop()
    while True:
        at = start + n / rate
        if at >= end:
            break
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(at)))
        n += 1
    await asyncio.gather(*tasks)


async def _load(plan: list[tuple[int, str, dict, float, str]]) -> dict[str, dict[int, int]]:
    """plan: (port, path, headers, rate, name) streams, all at once; the counts by name."""
    counts: dict[str, dict[int, int]] = {}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=200)) as session:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.2
        end = start + WARMUP_S + MEASURE_S
        await asyncio.gather(*(
            _stream(session, port, path, headers, rate, start, end, start + WARMUP_S, counts.setdefault(name, {}))
            for port, path, headers, rate, name in plan))
    return counts


@pytest.mark.xfail(reason="measured on Envoy 1.40 (2 cores, 2 runs): 261-264 let through per user for 200 configured "
                   "(+30.5% to +32%), 401-405 per route for 300 (+33.7% to +35%): RLQS budgets overshoot by about a "
                   "third, outside +-10%; mode Exact (per-request) is the default until this passes", strict=False)
def test_one_budget_across_two_envoys_under_uneven_load(gws: list[Meshgate]) -> None:
    a, b = gws
    tag = os.getpid()
    plan = []
    # Each budget is offered twice its rate: 70% through Envoy a, 30% through Envoy b.
    for user in ("alice", "bob"):
        headers = {"x-user": f"{user}-{tag}"}
        plan += [(a.port, "/user", headers, 28.0, user), (b.port, "/user", headers, 12.0, user)]
    plan += [(a.port, "/route", {}, 42.0, "route"), (b.port, "/route", {}, 18.0, "route")]
    counts = asyncio.run(_load(plan))
    expected = {"alice": 20 * MEASURE_S, "bob": 20 * MEASURE_S, "route": 30 * MEASURE_S}
    report = {name: (c.get(200, 0), expected[name], round(c.get(200, 0) / expected[name] - 1, 3), dict(c))
              for name, c in counts.items()}
    print("admitted, expected, error, statuses:", report)
    for name, (admitted, want, error, statuses) in report.items():
        assert set(statuses) <= {200, 429}, report  # nothing else (no 5xx, no timeouts)
        assert abs(error) <= TOLERANCE, f"{name}: {admitted} let through in {MEASURE_S:g}s, {want:g} configured: {report}"


def test_a_quota_server_down_keeps_the_no_assignment_behaviour(gws: list[Meshgate]) -> None:
    a, _ = gws
    pid = a.status()["edge"]["pid"]
    os.kill(pid, signal.SIGKILL)  # our own child (started by this module's meshgate run), by PID
    wait_until(lambda: not pid_alive(pid), timeout=5, what="the companion to be gone")
    user = f"newcomer-{os.getpid()}"  # buckets never assigned
    opened = [request(a.port, "/user", headers={"x-user": user}, timeout=5).status for _ in range(5)]
    closed = [request(a.port, "/closed", headers={"x-user": user}, timeout=5).status for _ in range(5)]
    assert opened == [200] * 5, opened  # ALLOW_ALL (the default)
    assert closed == [429] * 5, closed  # DENY_ALL (failClosed)
    wait_until(lambda: a.status()["edge"].get("pid") not in (None, pid), timeout=15, what="the companion restarted")
    # Back: the fail-closed bucket gets its assignment, and requests pass again.
    wait_until(lambda: request(a.port, "/closed", headers={"x-user": user}, timeout=5).status == 200, timeout=15,
               interval=0.3, what="an assignment from the restarted quota server")
